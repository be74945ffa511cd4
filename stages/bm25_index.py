"""Stage `bm25_index`: the BM25 index of the corpus (bm25s over title + text), built once for every split's run.

Input: ``prepared`` (a `prepare` artifact). Output: bm25s' own index files (``bm25s.BM25.load(artifact)`` reads
them; the vocabulary is numbered in token order, so the same corpus and settings give the same bytes),
``doc_ids.parquet`` (the corpus ids in the index's row order) and ``settings.json`` (how queries must be tokenized).
`stages.ml.lexical.load_index` reads it back for the `bm25` stage.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .core.artifacts import BM25_SETTINGS, DOC_IDS_FILE
from .core.cli import run_stage
from .core.errors import DataError
from .core.tables import read_corpus, write_table
from .ml.lexical import import_bm25s, tokenize

VERSION = 1
log = logging.getLogger("stages.bm25_index")


@dataclass
class Bm25IndexParams:
    k1: float
    b: float
    method: str
    """bm25s scoring variant: lucene, robertson, atire, bm25l, bm25+."""
    stopwords: str
    """bm25s stopword list ('en', 'german', ...), or '' for none."""
    stemmer: str
    """Snowball stemmer language (PyStemmer), or '' for none."""


def build_index(params: Bm25IndexParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    bm25s = import_bm25s()
    started = time.perf_counter()
    corpus = read_corpus(inputs["prepared"])
    texts = (corpus["title"] + " " + corpus["text"]).str.strip().tolist()
    tokens = tokenize(texts, params.stopwords, params.stemmer, ids=True)
    if not tokens.vocab:
        raise DataError("no document has a term to index", path=inputs["prepared"], fix="check the corpus texts")
    tokenized = time.perf_counter()
    retriever = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
    retriever.index(tokens, show_progress=False)
    number_in_token_order(retriever)
    retriever.save(out_dir, show_progress=False)
    write_table(corpus[["doc_id"]], out_dir / DOC_IDS_FILE)
    terms = len(retriever.scores["indptr"]) - 1
    (out_dir / BM25_SETTINGS).write_text(json.dumps({**asdict(params), "documents": len(corpus), "terms": terms}) + "\n")
    seconds = time.perf_counter() - started
    postings = len(retriever.scores["data"])
    log.info("bm25_index: %d documents, %d terms, %d postings in %.1f s", len(corpus), terms, postings, seconds)
    return {
        "items": {"documents": len(corpus), "postings": int(postings)},
        "documents": len(corpus),
        "terms": terms,
        "postings": postings,
        "tokenize_seconds": round(tokenized - started, 3),
        "seconds": round(seconds, 3),
    }


def number_in_token_order(retriever) -> None:
    """Renumber the vocabulary in token order, moving the matrix columns along (bm25s numbers stems in set order,
    which changes from one process to the next)."""
    scores, vocab = retriever.scores, retriever.vocab_dict
    indptr = scores["indptr"]
    terms = len(indptr) - 1
    tokens = sorted(token for token, column in vocab.items() if column < terms)
    order = np.array([vocab[token] for token in tokens], dtype=np.int64)
    starts, lengths = indptr[order], np.diff(indptr)[order]
    new_indptr = np.zeros_like(indptr)
    np.cumsum(lengths, out=new_indptr[1:])
    gather = np.arange(new_indptr[-1], dtype=np.int64) - np.repeat(new_indptr[:-1] - starts, lengths)
    scores.update(data=scores["data"][gather], indices=scores["indices"][gather], indptr=new_indptr)
    renumbered = {token: column for column, token in enumerate(tokens)}
    if vocab.get("", -1) >= terms:
        renumbered[""] = terms  # bm25s' empty token: past the last column, matches no document
    retriever.vocab_dict = renumbered
    retriever.unique_token_ids_set = set(renumbered.values())
    if retriever.nonoccurrence_array is not None:
        retriever.nonoccurrence_array = retriever.nonoccurrence_array[order]


def main(argv: list[str] | None = None) -> int:
    return run_stage("bm25_index", Bm25IndexParams, build_index, argv)


if __name__ == "__main__":
    sys.exit(main())
