"""Stage `bm25`: one split's BM25 run over a `bm25_index` artifact (built once per corpus and settings).

Inputs: ``prepared`` (the split's queries) and ``index`` (a `bm25_index` artifact of the same corpus). Output:
run.parquet (query_id, doc_id, rank, score), run.trec, summary.json with timings and the backend that searched.

A batch of queries is a (queries x terms) matrix of term counts; times the index's (terms x documents) BM25 weights
it gives every score of the batch at once, and the top k of each row are kept. Two backends, the same run:

- ``torch-cuda`` where a CUDA device is visible (the stage is started as a GPU stage, `stages.core.launch`): the
  weights stay on the GPU and each batch's scores are scattered term at a time into a dense buffer sized to the
  card (one fused Triton kernel where triton is installed, else torch's ``index_add_``), then ``topk``
  (`stages.ml.sparse_search`);
- ``scipy`` otherwise: a scipy sparse product, which releases the GIL, so batches run on the rule's threads. This
  path imports no torch (`stages.core.resources.gpu_may_be_visible` decides without it where it can).

Both give the same float32 scores (the same sums in the same order) and the same documents as bm25s' retrieve (up to
float rounding); only documents sharing a term with the query are retrieved (score > 0; for bm25l and bm25+, which
give every document the query's score for absent terms, not the documents that get only that); equal scores rank
the lower corpus row first, so the run depends neither on the backend, the thread count nor the batches.
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import scipy.sparse as sp

from .ml.lexical import Bm25Index, load_index, tokenize
from .core.cli import run_stage
from .core.errors import ConfigError
from .core.resources import available_threads, gpu_may_be_visible
from .core.tables import read_queries, run_from_topk, write_run

VERSION = 2
log = logging.getLogger("stages.bm25")
BATCH_POSTINGS = 1 << 22  # postings a batch may read: bounds the memory of its scores (8 bytes each at most)
BATCH_QUERIES = 256


@dataclass
class Bm25Params:
    split: str
    """Which split's queries to run."""
    top_k: int


def bm25_run(params: Bm25Params, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    if "index" not in inputs:
        raise ConfigError("stage bm25 needs an 'index' input", fix="pass a bm25_index artifact of the same corpus")
    started = time.perf_counter()
    index = load_index(inputs["index"])
    queries = read_queries(inputs["prepared"], params.split)
    k = min(params.top_k, index.term_docs.shape[1])
    searcher = device_searcher(index)
    backend = "scipy" if searcher is None else f"torch-{searcher.device.type}"
    loaded = time.perf_counter()
    threads = available_threads()  # the rule's threads (OMP_NUM_THREADS), within this process's CPUs
    docs, scores = search(index, queries["text"].tolist(), k, threads, searcher)
    searched = time.perf_counter()
    run = run_from_topk(queries["query_id"].tolist(), index.doc_ids, docs, scores)
    write_run(run, out_dir, tag="bm25")
    seconds = searched - loaded
    log.info("bm25: %d %s queries, top %d, %s, %d threads: %.1f s", len(queries), params.split, k, backend, threads,
             seconds)
    return {
        "backend": backend,
        "batch_queries": None if searcher is None else searcher.batch,
        "scatter": None if searcher is None else searcher.kernel,
        "items": {"queries": len(queries), "query_passage_pairs": len(queries) * int(index.term_docs.shape[1])},
        "queries": len(queries),
        "top_k": k,
        "rows": len(run),
        "load_seconds": round(loaded - started, 3),
        "search_seconds": round(seconds, 3),
        "queries_per_s": round(len(queries) / max(seconds, 1e-9), 1),
    }


def device_searcher(index: Bm25Index):
    """The index's weights on the visible CUDA device (`stages.ml.sparse_search`), or None (no GPU: the scipy path,
    without importing torch where the environment already says there is no GPU)."""
    if not gpu_may_be_visible():
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    from .ml.sparse_search import SparseTorchSearcher

    return SparseTorchSearcher(index.term_docs, index.nonoccurrence, "cuda")


def search(
    index: Bm25Index, texts: list[str], k: int, threads: int = 1, searcher=None
) -> tuple[np.ndarray, np.ndarray]:
    """(documents, scores): (queries, k) arrays of corpus rows (-1 where fewer than k documents match) and scores;
    with ``searcher`` (a `stages.ml.sparse_search.SparseTorchSearcher` of the index) on its device, else with scipy."""
    settings = index.settings
    queries = query_matrix(index, tokenize(texts, settings["stopwords"], settings["stemmer"]))
    if searcher is not None:
        return searcher.search(queries, k)
    docs = np.full((len(texts), k), -1, dtype=np.int32)
    scores = np.zeros((len(texts), k), dtype=np.float32)

    def run_batch(rows: slice) -> None:
        docs[rows], scores[rows] = search_batch(index, queries[rows], k)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for _ in pool.map(run_batch, batches(index, queries)):
            pass
    return docs, scores


def query_matrix(index: Bm25Index, token_lists: list[list[str]]) -> sp.csr_matrix:
    """(queries x terms) counts of each query's terms that the index knows, terms in order within a row."""
    rows, columns = [], []
    for row, tokens in enumerate(token_lists):
        known = [index.vocab[token] for token in tokens if token in index.vocab]
        columns += known
        rows += [row] * len(known)
    counts = np.ones(len(columns), dtype=np.float32)
    shape = (len(token_lists), index.term_docs.shape[0])
    matrix = sp.csr_matrix((counts, (np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64))), shape=shape)
    matrix.sum_duplicates()
    return matrix


def batches(index: Bm25Index, queries: sp.csr_matrix) -> list[slice]:
    """Consecutive query rows, each batch reading at most BATCH_POSTINGS postings (one query may read more)."""
    read = np.concatenate([[0], np.cumsum(np.diff(index.term_docs.indptr)[queries.indices])])
    cost = read[queries.indptr[1:]] - read[queries.indptr[:-1]]
    found, start, total = [], 0, 0
    for row, value in enumerate(cost.tolist()):
        if row > start and (total + value > BATCH_POSTINGS or row - start == BATCH_QUERIES):
            found.append(slice(start, row))
            start, total = row, 0
        total += value
    return found + [slice(start, queries.shape[0])] if queries.shape[0] > start else found


def search_batch(index: Bm25Index, queries: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each query of a batch, (documents, scores): every score of the batch as one sparse product."""
    scores = queries @ index.term_docs
    if index.nonoccurrence is not None:  # bm25l, bm25+: each query term adds its score for absent terms everywhere
        scores.data += np.repeat((queries @ index.nonoccurrence).astype(np.float32), np.diff(scores.indptr))
    docs = np.full((queries.shape[0], k), -1, dtype=np.int32)
    best = np.zeros((queries.shape[0], k), dtype=np.float32)
    for row in range(queries.shape[0]):
        start, stop = scores.indptr[row], scores.indptr[row + 1]
        found, values = top_k(scores.indices[start:stop], scores.data[start:stop], k)
        docs[row, : len(found)], best[row, : len(found)] = found, values
    return docs, best


def top_k(docs: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (at most) k positive scores that rank first, by decreasing score, equal scores by lower document row."""
    floor = kth_bound(scores, k)
    keep = np.flatnonzero(scores >= floor if floor > 0 else scores > 0)
    docs, scores = docs[keep], scores[keep]
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        above, tied = np.flatnonzero(scores > kth), np.flatnonzero(scores == kth)
        tied = tied[np.argsort(docs[tied], kind="stable")[: k - len(above)]]
        keep = np.concatenate([above, tied])
        docs, scores = docs[keep], scores[keep]
    order = np.lexsort((docs, -scores))
    return docs[order], scores[order]


def kth_bound(scores: np.ndarray, k: int) -> float:
    """A score at most the k-th highest (0 on rows under 4k): the k-th highest of an even sample, cheap on long rows."""
    stride = int(np.sqrt(len(scores) / k)) if k else 0
    if stride < 2:
        return 0.0
    sample = scores[::stride]
    return float(np.partition(sample, len(sample) - k)[len(sample) - k])


def main(argv: list[str] | None = None) -> int:
    return run_stage("bm25", Bm25Params, bm25_run, argv)


if __name__ == "__main__":
    sys.exit(main())
