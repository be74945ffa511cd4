"""Stage `bm25_index`: the BM25 index of the corpus (bm25s over title + text), built once for every split's run.

Input: ``prepared`` (a `prepare` artifact). Output: bm25s' own index files (``bm25s.BM25.load(artifact)`` reads
them; the vocabulary is numbered in token order, so the same corpus and settings give the same bytes),
``doc_ids.parquet`` (the corpus ids in the index's row order) and ``settings.json`` (how queries must be tokenized).
`load_index` reads it back for the `bm25` stage.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pyarrow.parquet as pq

from .core.cli import run_stage
from .core.errors import ArtifactError, ConfigError, DataError
from .core.tables import read_corpus, write_table

if TYPE_CHECKING:
    import scipy.sparse

VERSION = 1
log = logging.getLogger("stages.bm25_index")
DOC_IDS, SETTINGS = "doc_ids.parquet", "settings.json"
MATRIX = {"data": "data.csc.index.npy", "indices": "indices.csc.index.npy", "indptr": "indptr.csc.index.npy"}
VOCAB, NONOCCURRENCE = "vocab.index.json", "nonoccurrence_array.index.npy"


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


def import_bm25s():
    os.environ["JAX_PLATFORMS"] = "cpu"  # bm25s imports JAX when installed: keep it off the GPU (no preallocation)
    import bm25s

    return bm25s


def tokenize(texts: list[str], stopwords: str, stemmer: str, ids: bool = False):
    """bm25s' tokenizer with the index's settings: token lists, or (``ids``) bm25s' Tokenized (ids, vocabulary)."""
    import Stemmer

    bm25s = import_bm25s()
    options = {"stopwords": stopwords or None, "show_progress": False}
    try:
        options["stemmer"] = Stemmer.Stemmer(stemmer) if stemmer else None
        bm25s.tokenize(["probe"], **options)
    except (KeyError, ValueError) as error:
        raise ConfigError(
            f"bm25 tokenizer settings stopwords={stopwords!r}, stemmer={stemmer!r} are not usable: {error}",
            fix="use a PyStemmer language (Stemmer.algorithms()) and a bm25s stopword language, or '' for none",
        ) from None
    return bm25s.tokenize(texts, return_ids=ids, **options)


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
    write_table(corpus[["doc_id"]], out_dir / DOC_IDS)
    terms = len(retriever.scores["indptr"]) - 1
    (out_dir / SETTINGS).write_text(json.dumps({**asdict(params), "documents": len(corpus), "terms": terms}) + "\n")
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


@dataclass
class Bm25Index:
    """A `bm25_index` artifact in memory: ``term_docs`` is the (terms x documents) CSR matrix of BM25 weights."""

    term_docs: scipy.sparse.csr_matrix
    vocab: dict[str, int]
    doc_ids: np.ndarray
    settings: dict
    nonoccurrence: np.ndarray | None


def load_index(artifact: Path) -> Bm25Index:
    import scipy.sparse as sp

    artifact = Path(artifact)
    for name in [*MATRIX.values(), VOCAB, DOC_IDS, SETTINGS]:
        if not (artifact / name).is_file():
            raise ArtifactError(f"bm25 index lacks {name}", path=artifact, fix="rerun the bm25_index stage")
    arrays = {key: np.load(artifact / name) for key, name in MATRIX.items()}
    settings = json.loads((artifact / SETTINGS).read_text())
    doc_ids = pq.read_table(artifact / DOC_IDS, columns=["doc_id"]).column("doc_id").to_numpy(zero_copy_only=False)
    terms, documents = len(arrays["indptr"]) - 1, len(doc_ids)
    if documents != settings["documents"] or terms != settings["terms"]:
        raise ArtifactError("bm25 index files disagree on its size", path=artifact, fix="rerun the bm25_index stage")
    vocab = {token: column for token, column in json.loads((artifact / VOCAB).read_text()).items() if column < terms}
    nonoccurrence = np.load(artifact / NONOCCURRENCE) if (artifact / NONOCCURRENCE).is_file() else None
    term_docs = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=(terms, documents))
    return Bm25Index(term_docs, vocab, doc_ids, settings, nonoccurrence)


def main(argv: list[str] | None = None) -> int:
    return run_stage("bm25_index", Bm25IndexParams, build_index, argv)


if __name__ == "__main__":
    sys.exit(main())
