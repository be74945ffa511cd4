"""`score` at the MS MARCO dev size: a synthetic run of ``--queries`` queries x ``--depth`` documents and its qrels.

Builds a `retrieve`-like artifact (run.parquet and run.trec by `RunWriter`; documents distinct within a query, as
top-k results are; scores with ties) and a `prepare`-like one (qrels of split dev: one judged document a query, which
the run ranks for half of them, a second for every tenth, some graded 2; 1% more judged queries than the run
answers), both with manifests, as the pipeline's are. Then times, with the schema's score params (``--samples``
overrides ``bootstrap_samples``):

- stage: the `score` function in this process (reading, evaluating, bootstrapping, writing);
- process: ``python -m stages.score OUT --params ... --inputs ...`` as the workflow runs it, from start to exit, with
  its summary.json's ``wall_s`` (work) and ``fixed_s`` (start to work).

Prints one JSON object (also written to ``--out``).

    python benchmarks/score_throughput.py [--queries 6980] [--depth 1000] [--samples N] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import stages
from stages.core import settings, store
from stages.core.artifacts import QRELS
from stages.core.tables import RunWriter, run_table_from_topk, write_table
from stages.score import ScoreParams, score

MS_MARCO_PASSAGES = 8_841_823
ROOT = Path(stages.__file__).resolve().parent.parent
"""The checkout whose `stages` this imports (PYTHONPATH): its stage runs in the process."""


def query_ids(numbers: np.ndarray) -> pa.Array:
    return pa.array(numbers + 10**9).cast(pa.string())


def ranked_docs(rng: np.random.Generator, count: int, depth: int, docs: int) -> np.ndarray:
    """(count, depth) document numbers, distinct within a row (as top-k results are): one from each of ``depth``
    consecutive slices of the collection, rotated by a random start."""
    width = docs // depth
    picks = np.arange(depth) * width + rng.integers(0, width, (count, depth))
    return (picks + rng.integers(0, docs, (count, 1))) % docs


def make_run(folder: Path, args: argparse.Namespace, batch: int = 1000) -> tuple[int, np.ndarray]:
    """The run artifact, and each query's first judged document: for even queries the one the run ranks at a
    position skewed to the top (the square of a uniform one), for odd ones one it ranks only by chance."""
    doc_ids = pa.array(np.arange(args.docs)).cast(pa.string())
    judged = np.arange(args.queries) * 7919 % args.docs
    values = {"synthetic": [args.queries, args.depth]}
    with store.write_artifact(folder, "retrieve", values, {}, check_key=False) as tmp:
        with RunWriter(tmp, "synthetic") as writer:
            for first in range(0, args.queries, batch):
                count = min(batch, args.queries - first)
                rng = np.random.default_rng(first)
                indices = ranked_docs(rng, count, args.depth, args.docs)
                scores = -np.sort(-np.round(rng.normal(size=(count, args.depth)), 3).astype(np.float32), axis=1)
                query = np.arange(first, first + count)
                even = np.flatnonzero(query % 2 == 0)
                judged[query[even]] = indices[even, (query[even] * 31 % args.depth) ** 2 // args.depth]
                writer.write(*run_table_from_topk(query_ids(query), doc_ids, indices, scores).columns)
    return writer.rows, judged


def make_prepared(folder: Path, args: argparse.Namespace, judged: np.ndarray) -> None:
    """Qrels of split dev: ``judged`` of each query, a second document for every tenth, relevance 2 for every
    seventh; 1% more judged queries than the run answers."""
    extra = np.arange(args.queries, int(args.queries * 1.01))
    queries = np.concatenate([np.arange(args.queries), extra])
    second = queries[queries % 10 == 0]
    numbers = np.concatenate([queries, second])
    doc = np.concatenate([judged, extra * 7919 % args.docs, (second * 104729 + 1) % args.docs])
    relevance = np.where(numbers % 7 == 0, 2, 1)
    ids = query_ids(numbers).to_pylist()
    qrels = pd.DataFrame({"query_id": ids, "doc_id": doc.astype(str), "relevance": relevance})
    with store.write_artifact(folder, "prepare", {"synthetic": args.queries}, {}, check_key=False) as tmp:
        write_table(qrels.assign(split="dev"), tmp / QRELS)


def time_stage(params: ScoreParams, inputs: dict[str, Path], work: Path) -> dict:
    out = work / "score-in-process"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    began = time.perf_counter()
    summary = score(params, inputs, out)
    seconds = time.perf_counter() - began
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    return {"seconds": round(seconds, 3), "queries": summary["queries"], "metrics": metrics}


def time_process(params: ScoreParams, inputs: dict[str, Path], work: Path) -> dict:
    values = dataclasses.asdict(params)
    out = work / "score" / store.expected_key("score", values, inputs)[2]
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "stages.score", str(out), "--params", json.dumps(values)]
    command += ["--inputs", json.dumps({name: str(path) for name, path in inputs.items()})]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    resources = json.loads((out / "summary.json").read_text())["resources"]
    return {"seconds": round(seconds, 3), "work_s": resources["wall_s"], "fixed_s": resources["fixed_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=6980)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=MS_MARCO_PASSAGES)
    parser.add_argument("--samples", type=int, help="bootstrap samples (default: the schema's)")
    parser.add_argument("--repeat", type=int, default=2, help="process runs (the best is reported)")
    parser.add_argument("--work", type=Path, help="folder for the data (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="score-throughput-"))
    prepared, run = work / "prepare" / "synthetic", work / "retrieve" / "synthetic"
    if not (run / "manifest.json").is_file():
        rows, judged = make_run(run, args)
        make_prepared(prepared, args, judged)
    else:
        rows = args.queries * args.depth
    overrides = {"bootstrap_samples": args.samples} if args.samples else {}
    params = settings.params(ScoreParams, "score", split="dev", **overrides)
    inputs = {"prepared": prepared, "run": run}
    result = {
        "queries": args.queries,
        "depth": args.depth,
        "rows": rows,
        "measures": params.measures,
        "bootstrap_samples": params.bootstrap_samples,
        "run_parquet_mib": round((run / "run.parquet").stat().st_size / 2**20, 1),
        "threads": len(os.sched_getaffinity(0)),
        "stage": time_stage(params, inputs, work),
        "process": min((time_process(params, inputs, work) for _ in range(args.repeat)), key=lambda r: r["seconds"]),
    }
    if args.work is None:
        shutil.rmtree(work)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
