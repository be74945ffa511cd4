"""Run writing and negative mining at scale: a synthetic run of ``--queries`` queries x ``--depth`` documents.

- write: `retrieve`'s path for random top-k results (document ids: numbers of ``--docs`` as strings, scores with
  ties): `run_table_from_topk` and `RunWriter`, ``--batch`` queries at a time;
- mine: `mine_negatives` on that run, with one judged positive per query (half of them inside its top
  ``--depth``) and 1% more judged queries than the run answers. The run's query ids are in string order, as
  `retrieve` writes them; ``--unsorted`` gives ids in another order, so that mining sorts the rows.

Each phase runs in a process of its own, so its peak RSS is its own (``ru_maxrss``; it includes the synthetic data of
one batch). Prints one JSON object (also written to ``--out``): per phase wall and CPU seconds, rows/s, peak RSS.

    python benchmarks/mine_scale.py --queries 100000 [--depth 200] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.core import settings
from stages.mine_negatives import MineParams, mine
from stages.core.tables import RunWriter, run_table_from_topk
from stages.core.artifacts import QRELS

MS_MARCO_PASSAGES = 8_841_823


def positive(query: np.ndarray, docs: int) -> np.ndarray:
    """The judged positive document of each query number."""
    return query * 7919 % docs


def query_ids(numbers: np.ndarray, args: argparse.Namespace) -> pa.Array:
    """Query ids: as strings in number order (as `retrieve` writes them: sorted), or plain numbers (``--unsorted``:
    string order differs from the run's, so mining sorts)."""
    return pa.array(numbers if args.unsorted else numbers + 10**9).cast(pa.string())


def topk(args: argparse.Namespace, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (indices, scores) of queries [first, first + count): scores descending, with ties; even queries hold
    their positive at rank (query % depth) + 1."""
    rng = np.random.default_rng(first)
    indices = rng.integers(0, args.docs, (count, args.depth))
    scores = -np.sort(-np.round(rng.normal(size=(count, args.depth)), 3).astype(np.float32), axis=1)
    query = np.arange(first, first + count)
    even = query % 2 == 0
    indices[even, query[even] % args.depth] = positive(query[even], args.docs)
    return indices, scores


def phase_write(args: argparse.Namespace) -> dict:
    doc_ids = pa.array(np.arange(args.docs)).cast(pa.string())
    seconds = {"generate": 0.0, "table": 0.0, "write": 0.0}
    (args.work / "run").mkdir(parents=True, exist_ok=True)
    with RunWriter(args.work / "run", "synthetic") as writer:
        for first in range(0, args.queries, args.batch):
            began = time.perf_counter()
            count = min(args.batch, args.queries - first)
            indices, scores = topk(args, first, count)
            queries = query_ids(np.arange(first, first + count), args)
            made = time.perf_counter()
            table = run_table_from_topk(queries, doc_ids, indices, scores)
            tabled = time.perf_counter()
            writer.write(*table.columns)
            seconds["generate"] += made - began
            seconds["table"] += tabled - made
            seconds["write"] += time.perf_counter() - tabled
    files = {path.name: path.stat().st_size >> 20 for path in (args.work / "run").iterdir()}
    return {
        "rows": writer.rows,
        **{f"{name}_seconds": round(value, 2) for name, value in seconds.items()},
        "rows_per_s": round(writer.rows / (seconds["table"] + seconds["write"])),
        "threads": writer.threads,
        "file_mib": files,
    }


def phase_mine(args: argparse.Namespace) -> dict:
    judged = np.arange(int(args.queries * 1.01))
    prepared = args.work / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    qrels = pd.DataFrame({"split": "train", "query_id": query_ids(judged, args).to_numpy(zero_copy_only=False)})
    qrels["doc_id"], qrels["relevance"] = positive(judged, args.docs).astype(str), 1
    qrels.to_parquet(prepared / QRELS)
    out = args.work / "negatives"
    out.mkdir(exist_ok=True)
    began = time.perf_counter()
    params = settings.params(MineParams, "mine", split="train", depth=args.depth)
    summary = mine(params, {"prepared": prepared, "run": args.work / "run"}, out)
    seconds = time.perf_counter() - began
    return {
        "seconds": round(seconds, 2),
        "run_rows_per_s": round(args.queries * args.depth / seconds),
        "file_mib": (out / "negatives.parquet").stat().st_size >> 20,
        "summary": {k: v for k, v in summary.items() if k != "items"},
    }


def in_child(args: argparse.Namespace, phase: str) -> dict:
    """Run one phase in a fresh process; its result with its CPU seconds and peak RSS."""
    command = [sys.executable, __file__, "--phase", phase, "--work", str(args.work)]
    command += ["--queries", str(args.queries), "--depth", str(args.depth), "--docs", str(args.docs)]
    command += ["--batch", str(args.batch)] + (["--unsorted"] if args.unsorted else [])
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--depth", type=int, default=200)
    parser.add_argument("--docs", type=int, default=MS_MARCO_PASSAGES)
    parser.add_argument("--batch", type=int, default=65_536, help="queries a RunWriter.write")
    parser.add_argument("--unsorted", action="store_true", help="query ids whose string order is not the run's")
    parser.add_argument("--work", type=Path, help="folder for the run and the negatives (default: a temporary one)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--phase", choices=["write", "mine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = (phase_write if args.phase == "write" else phase_mine)(args)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result |= {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mib": usage.ru_maxrss >> 10}
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as scratch:
        args.work = args.work or Path(scratch)
        result = {"queries": args.queries, "depth": args.depth, "docs": args.docs, "batch": args.batch}
        result |= {"sorted_ids": not args.unsorted}
        result |= {"write": in_child(args, "write"), "mine": in_child(args, "mine")}
    print(text := json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
