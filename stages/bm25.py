"""Stage `bm25`: BM25 retrieval with bm25s over title + text (English stopwords, Snowball stemmer).

Input: ``prepared`` (a `prepare` artifact). Output: run.parquet (query_id, doc_id, rank, score) and run.trec.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from stages.cli import run_stage
from stages.tables import read_corpus, read_queries, run_from_topk, write_run

VERSION = 1
log = logging.getLogger("stages.bm25")


@dataclass
class Bm25Params:
    split: str = "test"
    """Which split's queries to run."""
    top_k: int = 1000
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    """bm25s scoring variant: lucene, robertson, atire, bm25l, bm25+."""
    stopwords: str = "en"
    stemmer: str = "english"
    """Snowball stemmer language (PyStemmer), or '' for none."""


def bm25_run(params: Bm25Params, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    import bm25s
    import Stemmer

    corpus = read_corpus(inputs["prepared"])
    queries = read_queries(inputs["prepared"], params.split)
    stemmer = Stemmer.Stemmer(params.stemmer) if params.stemmer else None
    texts = (corpus["title"] + " " + corpus["text"]).str.strip().tolist()
    corpus_tokens = bm25s.tokenize(texts, stopwords=params.stopwords, stemmer=stemmer, show_progress=True)
    retriever = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
    retriever.index(corpus_tokens, show_progress=True)
    query_tokens = bm25s.tokenize(queries["text"].tolist(), stopwords=params.stopwords, stemmer=stemmer)
    k = min(params.top_k, len(corpus))
    indices, scores = retriever.retrieve(query_tokens, k=k, show_progress=True)
    indices = np.where(scores > 0, indices, -1)  # documents sharing no term with the query are not retrieved
    run = run_from_topk(queries["query_id"].tolist(), corpus["doc_id"].to_numpy(), indices, scores)
    write_run(run, out_dir, tag="bm25")
    log.info("bm25: %d queries of split %s, top %d", len(queries), params.split, k)
    return {"queries": len(queries), "top_k": k, "rows": len(run)}


def main(argv: list[str] | None = None) -> int:
    return run_stage("bm25", Bm25Params, bm25_run, argv)


if __name__ == "__main__":
    sys.exit(main())
