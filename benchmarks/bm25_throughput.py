"""BM25 throughput: the `bm25` stage's two backends (scipy's batched sparse product on the CPU threads, torch's
term-at-a-time scatter on a GPU) against bm25s' own retrieve, on one index.

Builds the `bm25_index` artifact of a dataset (a BEIR or MS MARCO folder, ingested by `stages.prepare`) or of a
prepared artifact, then retrieves the top ``--top-k`` of ``--queries`` queries (the dataset's queries of every split,
repeated in order up to that number) with each backend of ``--backend``:

- ``scipy``: ``--threads`` threads (a comma list measures each; fewer threads than the most run a proportional share
  of the queries, at least 2,000; ``--scipy-queries`` caps the share of the most threads);
- ``torch``: `stages.ml.sparse_search` on ``--device`` (default: cuda where torch sees one, else cpu), every query,
  after a warm-up on the first 256 (not timed; nor is copying the index to the device, ``upload_seconds``), its
  scatter by torch's ``index_add_``;
- ``triton``: the same with the fused Triton scatter (`stages.ml.bm25_kernels`), what the stage runs on CUDA.

Each time includes tokenizing the queries, as in the stage (``tokenize_seconds``: that alone, once;
``postings_per_query``: the postings a query's terms hold, what the torch path scatters). bm25s'
``BM25.retrieve`` (numpy backend, ``n_threads`` = the most threads) runs on the first ``--reference-queries``.
Agreement of each backend with bm25s over that sample, and of torch with scipy over the queries both ran:
``identical_sets`` (the same top-k documents), ``same_up_to_ties`` (the same number of documents, rank by rank the
same scores within 1e-5 relative, and every document in one set but not the other scoring within 1e-5 relative of
its set's k-th score: the sets differ only where the k-th and (k+1)-th scores do by less than that), and the largest
relative score difference. Prints one JSON object (and writes it to ``--out``); asserts nothing.

    python benchmarks/repeated_corpus.py --docs 1000000 --out /tmp/scifact-1m
    python benchmarks/bm25_throughput.py --dataset /tmp/scifact-1m --queries 100000 --threads 1,16
    python benchmarks/msmarco_synthetic.py /tmp/msmarco-1m --passages 1000000
    python benchmarks/bm25_throughput.py --dataset /tmp/msmarco-1m --format msmarco --splits train,dev
    python benchmarks/bm25_throughput.py --prepared results/prepare/<key> --work /tmp/bm25-bench --backend torch
    python benchmarks/bm25_throughput.py --prepared results/prepare/<key> --index-threads 1,16 --index-only

``--index-threads`` builds the index once a thread count (``index_by_threads``: the stage's seconds, split into
tokenizing, weighing and writing, and tokens a second a thread while tokenizing; ``index_identical_files``: every
build wrote the same bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import stages.bm25
from stages.bm25 import query_matrix, search
from stages.bm25_index import Bm25IndexParams, build_index
from stages.ml.lexical import import_bm25s, load_index, tokenize
from stages.core.dataset_formats import dataset_files
from stages.core import settings
from stages.prepare import PrepareParams, prepare
from stages.core.tables import read_queries


TORCH_KERNELS = ("torch", "triton")  # `stages.ml.sparse_search`'s scatter kernels


def prepared_folder(args: argparse.Namespace, work: Path) -> tuple[Path, float]:
    """The prepared artifact (given, or made from the dataset folder) and the seconds making it took."""
    if args.prepared:
        return Path(args.prepared), 0.0
    out = work / "prepared"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    params = PrepareParams(
        format=args.format,
        splits=args.splits.split(","),
        dev_fraction=0.0,
        dev_source="train",
        seed=13,
        unknown_ids="error",
        empty_documents="keep",
    )
    prepare(params, dataset_files(Path(args.dataset), params.format, params.splits), out)
    return out, time.perf_counter() - started


def index_folder(args: argparse.Namespace, work: Path, prepared: Path) -> tuple[Path, dict]:
    """The index (given, or built with the default settings: once a count of ``--index-threads``, else on the
    process's threads) and its summary (sizes; build seconds when built; ``by_threads`` for several builds)."""
    if args.index:
        recorded = json.loads((Path(args.index) / "settings.json").read_text())
        postings = len(np.load(Path(args.index) / "data.csc.index.npy", mmap_mode="r"))
        return Path(args.index), {**recorded, "postings": postings, "seconds": None, "tokenize_seconds": None}
    by_threads, files = {}, {}
    for threads in args.index_threads or [None]:
        out = work / f"bm25_index-{threads or 'all'}"
        out.mkdir(parents=True, exist_ok=True)
        saved = os.environ.get("OMP_NUM_THREADS")
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)  # the stage's threads (`available_threads`)
        try:
            built = build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, out)
        finally:
            os.environ.pop("OMP_NUM_THREADS", None) if saved is None else os.environ.update(OMP_NUM_THREADS=saved)
        by_threads[str(built["threads"])] = index_rates(built)
        files[str(built["threads"])] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    built["by_threads"] = by_threads
    built["identical_files"] = all(hashes == next(iter(files.values())) for hashes in files.values())
    return out, built


def index_rates(built: dict) -> dict:
    """A build's times, and its tokens a second a thread (tokenizing: reading and counting the corpus' terms)."""
    tokenizing, threads = built["tokenize_seconds"], built["threads"]
    return {
        "seconds": built["seconds"],
        "tokenize_seconds": tokenizing,
        "index_seconds": built["index_seconds"],
        "write_seconds": round(built["seconds"] - tokenizing - built["index_seconds"], 3),
        "tokens": built["tokens"],
        "tokens_per_s": round(built["tokens"] / built["seconds"]),
        "tokenize_tokens_per_s_per_thread": round(built["tokens"] / tokenizing / threads),
        "tokenize_cpu_seconds": built["tokenize_cpu_seconds"],
        "cpu_tokens_per_s": built["cpu_tokens_per_s"],
    }


def query_texts(prepared: Path, count: int) -> list[str]:
    queries = pd.read_parquet(prepared / "queries.parquet")
    splits = sorted(queries["split"].unique())
    texts = pd.concat([read_queries(prepared, split) for split in splits])["text"].tolist()
    return [texts[i % len(texts)] for i in range(count)]


def ours(index, texts: list[str], k: int, threads: list[int], most: int) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """The scipy path: ``most`` queries with the most threads; fewer threads run a share (at least 2,000)."""
    measured = {}
    for count in sorted(threads, reverse=True):
        share = texts[: max(2000, most * count // max(threads))]
        started = time.perf_counter()
        found = search(index, share, k, count)
        seconds = time.perf_counter() - started
        if count == max(threads):
            result = found
        measured[str(count)] = {
            "queries": len(share),
            "seconds": round(seconds, 3),
            "queries_per_s": round(len(share) / seconds, 1),
        }
    return measured, result


def on_torch(index, texts: list[str], k: int, device: str, max_batch: int, kernel: str) -> tuple[dict, tuple]:
    """The torch path on ``device`` with the ``kernel`` scatter: the index copied there once, a warm-up, then every
    query."""
    import torch

    from stages.ml.sparse_search import SparseTorchSearcher

    started = time.perf_counter()
    searcher = SparseTorchSearcher(index.term_docs, index.nonoccurrence, device, max_batch=max_batch, kernel=kernel)
    if searcher.device.type == "cuda":
        torch.cuda.synchronize()
    uploaded = time.perf_counter()
    search(index, texts[:256], k, searcher=searcher)
    if searcher.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    found = search(index, texts, k, searcher=searcher)
    seconds = time.perf_counter() - began
    measured = {
        "device": torch.cuda.get_device_name(searcher.device) if searcher.device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_queries": searcher.batch,
        "upload_seconds": round(uploaded - started, 3),
        "queries": len(texts),
        "seconds": round(seconds, 3),
        "queries_per_s": round(len(texts) / seconds, 1),
    }
    if searcher.device.type == "cuda":
        measured["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    measured["parts"] = parts(searcher, index, texts, k)
    return measured, found


def parts(searcher, index, texts: list[str], k: int) -> dict:
    """Where the torch path's time goes, from a second pass with the device synchronized around its parts (so the
    pass is slower than the timed one, and its parts are shares, not a sum of it): the postings located on the host
    (`batch_pairs`), the scatter on the device (the rest of `scatter`), the top k (`top_k`, ties settled, the copy
    back), and everything else (tokenizing, zeroing the buffer)."""
    import torch

    from stages.ml import sparse_search

    seconds = {"batch_pairs": 0.0, "scatter": 0.0, "top_k": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            torch.cuda.synchronize() if searcher.device.type == "cuda" else None
            began = time.perf_counter()
            result = function(*args, **kwargs)
            torch.cuda.synchronize() if searcher.device.type == "cuda" else None
            seconds[name] += time.perf_counter() - began
            return result

        return wrapper

    originals = (sparse_search.batch_pairs, sparse_search.top_k, type(searcher).scatter)
    sparse_search.batch_pairs = timed("batch_pairs", originals[0])
    sparse_search.top_k = timed("top_k", originals[1])
    type(searcher).scatter = timed("scatter", originals[2])
    began = time.perf_counter()
    try:
        search(index, texts, k, searcher=searcher)
    finally:
        sparse_search.batch_pairs, sparse_search.top_k, type(searcher).scatter = originals
    total = time.perf_counter() - began
    seconds["scatter"] -= seconds["batch_pairs"]  # batch_pairs runs inside scatter
    return {"total_s": round(total, 3), **{f"{name}_s": round(value, 3) for name, value in seconds.items()},
            "other_s": round(total - sum(seconds.values()), 3)}


def reference(index_dir: Path, texts: list[str], k: int, threads: int, settings: dict) -> tuple[dict, tuple]:
    bm25s = import_bm25s()
    retriever = bm25s.BM25.load(index_dir)
    tokens = tokenize(texts, settings["stopwords"], settings["stemmer"])
    started = time.perf_counter()
    docs, scores = retriever.retrieve(tokens, k=k, n_threads=threads, show_progress=False)
    seconds = time.perf_counter() - started
    measured = {"queries": len(texts), "n_threads": threads, "seconds": round(seconds, 3)}
    return measured | {"queries_per_s": round(len(texts) / seconds, 1)}, (docs, scores)


def agreement(
    mine: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray], tolerance: float = 1e-5
) -> dict:
    """Row by row over (documents, scores) pairs of (queries, k) arrays; missing ranks are -1 (ours) or score 0."""
    identical = same = 0
    worst = 0.0
    k = mine[0].shape[1]
    for docs, scores, their_docs, their_scores in zip(*mine, *theirs):
        docs, scores = docs[scores > 0], scores[scores > 0]  # bm25s returns k documents, matching or not
        their_docs, their_scores = their_docs[their_scores > 0], their_scores[their_scores > 0]
        equal = set(docs.tolist()) == set(their_docs.tolist())
        identical += equal
        if len(docs) != len(their_docs) or (len(docs) < k and not equal):  # fewer than k: every match, no tie
            continue
        if len(docs) == 0:
            same += 1
            continue
        error = float(np.max(np.abs(scores - their_scores) / np.abs(their_scores)))
        worst = max(worst, error)
        same += error <= tolerance and only_ties_differ(docs, scores, their_docs, tolerance) and only_ties_differ(
            their_docs, their_scores, docs, tolerance)
    count = len(mine[0])
    return {"queries": count, "identical_sets": identical / count, "same_up_to_ties": same / count,
            "max_relative_score_error": worst}


def only_ties_differ(docs: np.ndarray, scores: np.ndarray, other: np.ndarray, tolerance: float) -> bool:
    """Every document of ``docs`` that ``other`` lacks scores within ``tolerance`` (relative) of the last score."""
    missing = ~np.isin(docs, other)
    return bool(np.all(scores[missing] <= scores[-1] * (1 + tolerance)))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a BEIR or MS MARCO folder (see --format)")
    source.add_argument("--prepared", help="a `prepare` artifact")
    parser.add_argument("--format", default="beir", choices=["beir", "msmarco"])
    parser.add_argument("--splits", default="train,test", help="the dataset's splits (each needs a qrels file)")
    parser.add_argument("--index", help="a `bm25_index` artifact of the same corpus (default: build one)")
    parser.add_argument("--index-threads", help="build the index once a count, e.g. 1,16 (default: all threads)")
    parser.add_argument("--index-only", action="store_true", help="build the index, search nothing")
    parser.add_argument("--work", type=Path, help="folder for the prepared data and the index (default: a temp one)")
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--backend", default="scipy,torch", help="comma list of scipy, torch, triton")
    parser.add_argument("--threads", default=str(len(os.sched_getaffinity(0))), help="scipy: comma list, e.g. 1,8,16")
    parser.add_argument("--scipy-queries", type=int, default=0, help="scipy: at most this many (0: all)")
    parser.add_argument("--device", help="torch: cuda or cpu (default: cuda where torch sees one)")
    parser.add_argument("--max-batch", type=int, default=1024, help="torch: queries a batch at most")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--reference-queries", type=int, default=5000, help="bm25s' sample (0: skip bm25s)")
    parser.add_argument("--batch-postings", type=int, default=stages.bm25.BATCH_POSTINGS, help="scipy")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.backend = args.backend.split(",")
    args.index_threads = [int(t) for t in args.index_threads.split(",")] if args.index_threads else None
    if not set(args.backend) <= {"scipy", *TORCH_KERNELS}:
        parser.error(f"--backend: {args.backend} (allowed: scipy, torch, triton)")
    return args


def measure(args: argparse.Namespace, index, texts: list[str], k: int) -> tuple[dict, dict]:
    """{backend: its measurements}, {backend: its (documents, scores)}."""
    measured, found = {}, {}
    started = time.perf_counter()
    queries = query_matrix(index, tokenize(texts, index.settings["stopwords"], index.settings["stemmer"]))
    measured["tokenize_seconds"] = round(time.perf_counter() - started, 3)
    postings = np.diff(index.term_docs.indptr)[queries.indices]  # what term at a time reads: a query's posting lists
    measured["postings_per_query"] = round(float(postings.sum()) / max(1, len(texts)), 1)
    if "scipy" in args.backend:
        threads = [int(t) for t in args.threads.split(",")]
        most = min(len(texts), args.scipy_queries or len(texts))
        measured["scipy_by_threads"], found["scipy"] = ours(index, texts, k, threads, most)
    for kernel in TORCH_KERNELS:
        if kernel in args.backend:
            import torch

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            measured[kernel], found[kernel] = on_torch(index, texts, k, device, args.max_batch, kernel)
    return measured, found


def agreements(found: dict, index_dir: Path, texts: list[str], k: int, threads: int, settings: dict) -> dict:
    """bm25s' measurements and each backend's agreement with it (on the sample), and torch's with scipy."""
    result, agree = {}, {}
    if texts:
        result["bm25s"], theirs = reference(index_dir, texts, k, threads, settings)
        for backend, (docs, scores) in found.items():
            agree[f"{backend}_vs_bm25s"] = agreement((docs[: len(texts)], scores[: len(texts)]), theirs)
    for kernel in TORCH_KERNELS:
        if kernel in found and "scipy" in found:
            both = len(found["scipy"][0])
            docs, scores = found[kernel]
            agree[f"{kernel}_vs_scipy"] = agreement((docs[:both], scores[:both]), found["scipy"])
            agree[f"{kernel}_equals_scipy"] = bool(np.array_equal(docs[:both], found["scipy"][0])
                                                   and np.array_equal(scores[:both], found["scipy"][1]))
    return result | {"agreement": agree}


def main() -> None:
    args = arguments()
    stages.bm25.BATCH_POSTINGS = args.batch_postings
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        prepared, prepare_seconds = prepared_folder(args, work)
        index_dir, built = index_folder(args, work, prepared)
        result = {
            "documents": built["documents"],
            "terms": built["terms"],
            "postings": built["postings"],
            "prepare_seconds": round(prepare_seconds, 3),
            "index_seconds": built["seconds"],
            "index_tokenize_seconds": built["tokenize_seconds"],
            "index_by_threads": built.get("by_threads"),
            "index_identical_files": built.get("identical_files"),
            "cpus": len(os.sched_getaffinity(0)),
        }
        if not args.index_only:
            result |= searched(args, prepared, index_dir, built)
    print(text := json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(text + "\n")


def searched(args: argparse.Namespace, prepared: Path, index_dir: Path, built: dict) -> dict:
    """The queries' part: loading the index, each backend, bm25s and the agreements."""
    started = time.perf_counter()
    index = load_index(index_dir)
    load_seconds = time.perf_counter() - started
    texts = query_texts(prepared, args.queries)
    k = min(args.top_k, built["documents"])  # bm25s refuses a k above the corpus size
    result = {
        "index_load_seconds": round(load_seconds, 3),
        "queries": len(texts),
        "top_k": k,
        "batch_postings": args.batch_postings,
    }
    measured, found = measure(args, index, texts, k)
    result |= measured
    threads = max(int(t) for t in args.threads.split(","))
    return result | agreements(found, index_dir, texts[: args.reference_queries], k, threads, index.settings)


if __name__ == "__main__":
    main()
