"""BM25 throughput: the `bm25` stage's batched sparse retrieval against bm25s' own retrieve, on one index.

Builds the `bm25_index` artifact of a dataset (a BEIR or MS MARCO folder, ingested by `stages.prepare`) or of a
prepared artifact, then retrieves the top ``--top-k`` of ``--queries`` queries (the dataset's queries of every split,
repeated in order up to that number) with ``--threads`` threads (a comma list measures each; fewer threads than the
most run a proportional share of the queries, at least 2,000), and bm25s' ``BM25.retrieve`` (numpy backend,
``n_threads`` = the most threads) on the first ``--reference-queries`` of them. Agreement over those:
``identical_sets`` (the same top-k documents), ``same_up_to_ties`` (rank by rank the same scores within 1e-4
relative, and the same documents above the last score) and the largest relative score difference. Prints one JSON
object (and writes it to ``--out``); asserts nothing.

    python benchmarks/repeated_corpus.py --docs 1000000 --out /tmp/scifact-1m
    python benchmarks/bm25_throughput.py --dataset /tmp/scifact-1m --queries 100000 --threads 1,16
    python benchmarks/msmarco_synthetic.py /tmp/msmarco-1m --passages 1000000
    python benchmarks/bm25_throughput.py --dataset /tmp/msmarco-1m --format msmarco --splits train,dev
    python benchmarks/bm25_throughput.py --prepared results/prepare/<key> --work /tmp/bm25-bench
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import stages.bm25
from stages.bm25 import search
from stages.bm25_index import Bm25IndexParams, build_index
from stages.ml.lexical import import_bm25s, load_index, tokenize
from stages.core.dataset_formats import dataset_files
from stages.core import settings
from stages.prepare import PrepareParams, prepare
from stages.core.tables import read_queries


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
    """The index (given, or built with the default settings) and its summary (sizes; build seconds when built)."""
    if args.index:
        recorded = json.loads((Path(args.index) / "settings.json").read_text())
        postings = len(np.load(Path(args.index) / "data.csc.index.npy", mmap_mode="r"))
        return Path(args.index), {**recorded, "postings": postings, "seconds": None, "tokenize_seconds": None}
    out = work / "bm25_index"
    out.mkdir(parents=True, exist_ok=True)
    return out, build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, out)


def query_texts(prepared: Path, count: int) -> list[str]:
    queries = pd.read_parquet(prepared / "queries.parquet")
    splits = sorted(queries["split"].unique())
    texts = pd.concat([read_queries(prepared, split) for split in splits])["text"].tolist()
    return [texts[i % len(texts)] for i in range(count)]


def ours(index, texts: list[str], k: int, threads: list[int]) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Every query with the most threads; fewer threads run a share of the queries (at least 2,000)."""
    measured = {}
    for count in sorted(threads, reverse=True):
        share = texts[: max(2000, len(texts) * count // max(threads))]
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


def reference(index_dir: Path, texts: list[str], k: int, threads: int, settings: dict) -> tuple[dict, tuple]:
    bm25s = import_bm25s()
    retriever = bm25s.BM25.load(index_dir)
    tokens = tokenize(texts, settings["stopwords"], settings["stemmer"])
    started = time.perf_counter()
    docs, scores = retriever.retrieve(tokens, k=k, n_threads=threads, show_progress=False)
    seconds = time.perf_counter() - started
    measured = {"queries": len(texts), "n_threads": threads, "seconds": round(seconds, 3)}
    return measured | {"queries_per_s": round(len(texts) / seconds, 1)}, (docs, scores)


def agreement(mine: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray]) -> dict:
    identical = same = 0
    worst = 0.0
    for docs, scores, their_docs, their_scores in zip(*mine, *theirs):
        kept = their_scores > 0  # bm25s returns k documents, matching or not
        docs, scores = docs[docs >= 0], scores[docs >= 0]
        their_docs, their_scores = their_docs[kept], their_scores[kept]
        identical += set(docs.tolist()) == set(their_docs.tolist())
        if len(docs) != len(their_docs):
            continue
        if len(docs) == 0:
            same += 1
            continue
        error = float(np.max(np.abs(scores - their_scores) / np.abs(their_scores)))
        worst = max(worst, error)
        above = scores[-1] * (1 + 1e-4)
        same += error <= 1e-4 and set(docs[scores > above].tolist()) == set(their_docs[their_scores > above].tolist())
    count = len(mine[0])
    return {"identical_sets": identical / count, "same_up_to_ties": same / count, "max_relative_score_error": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a BEIR or MS MARCO folder (see --format)")
    source.add_argument("--prepared", help="a `prepare` artifact")
    parser.add_argument("--format", default="beir", choices=["beir", "msmarco"])
    parser.add_argument("--splits", default="train,test", help="the dataset's splits (each needs a qrels file)")
    parser.add_argument("--index", help="a `bm25_index` artifact of the same corpus (default: build one)")
    parser.add_argument("--work", type=Path, help="folder for the prepared data and the index (default: a temp one)")
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--threads", default=str(len(os.sched_getaffinity(0))), help="comma list, e.g. 1,8,16")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--reference-queries", type=int, default=5000, help="bm25s' sample (0: skip bm25s)")
    parser.add_argument("--batch-postings", type=int, default=stages.bm25.BATCH_POSTINGS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stages.bm25.BATCH_POSTINGS = args.batch_postings
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        prepared, prepare_seconds = prepared_folder(args, work)
        index_dir, built = index_folder(args, work, prepared)
        started = time.perf_counter()
        index = load_index(index_dir)
        load_seconds = time.perf_counter() - started
        texts = query_texts(prepared, args.queries)
        k = min(args.top_k, built["documents"])  # bm25s refuses a k above the corpus size
        threads = [int(t) for t in args.threads.split(",")]
        measured, mine = ours(index, texts, k, threads)
        result = {
            "documents": built["documents"],
            "terms": built["terms"],
            "postings": built["postings"],
            "prepare_seconds": round(prepare_seconds, 3),
            "index_seconds": built["seconds"],
            "index_tokenize_seconds": built["tokenize_seconds"],
            "index_load_seconds": round(load_seconds, 3),
            "queries": len(texts),
            "top_k": k,
            "batch_postings": args.batch_postings,
            "cpus": len(os.sched_getaffinity(0)),
            "ours_by_threads": measured,
        }
        sample = texts[: args.reference_queries]
        if sample:
            result["bm25s"], theirs = reference(index_dir, sample, k, max(threads), index.settings)
            result["agreement"] = agreement((mine[0][: len(sample)], mine[1][: len(sample)]), theirs)
    print(text := json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
