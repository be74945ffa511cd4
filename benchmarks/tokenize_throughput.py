"""Tokens/s of the `tokenize` stage as the DAG runs it: ``python -m stages.tokenize`` in a process of its own, with
OMP_NUM_THREADS set to the rule's threads as Snakemake sets it, on an MS MARCO-shaped synthetic corpus
(`msmarco_synthetic.py`, ingested by the `prepare` stage); checks that every thread count writes the same bytes.

One JSON line per thread count: the job's wall time from launch to exit (``job_s``; ``tokens_per_s`` is tokens over
it) and the CPU seconds of all its processes (``job_cpu_s``: on a shared machine, steadier than the wall time), the
stage's own block (``wall_s`` from its work's start, ``fixed_s`` before it), and, where the stage records
them, the CPU seconds of its workers and of its main process. From those: ``per_core_tokens_per_s`` (tokens per
worker CPU second) and ``main_ceiling_tokens_per_s`` (tokens per main-process CPU second: the rate no number of
workers can pass), and ``at_cores`` (``--cores``, default 16): the rate those give there, min(cores x per core,
ceiling), with this run's time outside the tokenizing loop added.

    python benchmarks/tokenize_throughput.py --passages 1000000 --threads 1 2 4 8 16
    python benchmarks/tokenize_throughput.py --prepared results/prepare/<key> --threads 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from msmarco_synthetic import generate  # noqa: E402


def prepared_corpus(work: Path, passages: int) -> Path:
    """A synthetic MS MARCO-shaped dataset of ``passages`` passages, through the `prepare` stage."""
    from stages.core.dataset_formats import dataset_files
    from stages.prepare import PrepareParams, prepare

    generate(work / "dataset", passages, train=1000, dev=100)
    params = PrepareParams(
        format="msmarco",
        splits=["train", "dev"],
        dev_fraction=0.0,
        dev_source="train",
        seed=13,
        unknown_ids="error",
        empty_documents="keep",
    )
    (work / "prepared").mkdir()
    prepare(params, dataset_files(work / "dataset", params.format, params.splits), work / "prepared")
    return work / "prepared"


def run_stage(root: Path, prepared: Path, out: Path, threads: int, model: str, max_length: int) -> dict:
    """One `tokenize` job; its summary with the job's wall time (``job_s``) and the output file's sha256."""
    params = json.dumps({"model": model, "max_length": max_length})
    command = [sys.executable, "-m", "stages.tokenize", str(out), "--no-check-key", "--params", params]
    command += ["--inputs", json.dumps({"prepared": str(prepared)})]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(root)}
    began, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    job_s, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_CHILDREN)
    job_cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime  # its processes, all of them
    summary = json.loads((out / "summary.json").read_text())
    digest = hashlib.sha256((out / "tokens.parquet").read_bytes()).hexdigest()[:16]
    return {**summary, "job_s": job_s, "job_cpu_s": job_cpu_s, "sha256": digest}


def row(summary: dict, threads: int, cores: int) -> dict:
    """The measurements of one job, and the rate they give on ``cores`` cores."""
    tokens, block, cpu = summary["tokens"], summary["resources"], summary.get("cpu_seconds") or {}
    result = {"threads": block["threads"], "omp_num_threads": threads, "documents": summary["rows"], "tokens": tokens}
    result |= {"job_s": round(summary["job_s"], 2), "wall_s": block["wall_s"], "fixed_s": block.get("fixed_s")}
    result |= {"loop_s": summary["seconds"], "job_cpu_s": round(summary["job_cpu_s"], 2)}
    result |= {"tokens_per_s": round(tokens / summary["job_s"]), "tokens_per_cpu_s": round(tokens / summary["job_cpu_s"])}
    result |= {"stage_tokens_per_s": round(tokens / block["wall_s"]), "loop_tokens_per_s": summary["tokens_per_s"]}
    result |= {"peak_rss_mib": block.get("peak_rss_mib"), "peak_rss_children_mib": block.get("peak_rss_children_mib")}
    if cpu.get("workers") and cpu.get("main"):
        per_core, ceiling = tokens / cpu["workers"], tokens / cpu["main"]
        outside = summary["job_s"] - summary["seconds"]  # process start, imports, tokenizer load, pool start
        rate = min(cores * per_core, ceiling)
        result |= {"cpu_s": cpu, "per_core_tokens_per_s": round(per_core), "main_ceiling_tokens_per_s": round(ceiling)}
        result["at_cores"] = {
            "cores": cores,
            "loop_tokens_per_s": round(rate),
            "job_tokens_per_s": round(tokens / (outside + tokens / rate)),
            "outside_loop_s": round(outside, 2),
        }
    result["sha256"] = summary["sha256"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--prepared", type=Path, help="an existing prepared artifact (else one is made)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--max-length", type=int, default=128, help="scale.yaml's doc_max_length")
    parser.add_argument("--cores", type=int, default=16, help="the cores to extrapolate to")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose stages run")
    parser.add_argument("--work", type=Path, help="a folder for the corpus and outputs (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        began = time.perf_counter()
        prepared = args.prepared or prepared_corpus(Path(tmp), args.passages)
        print(json.dumps({"prepared": str(prepared), "prepare_s": round(time.perf_counter() - began, 2)}), flush=True)
        digests = []
        for threads in args.threads:
            out = Path(tmp) / f"tokens-{threads}"
            summary = run_stage(args.root, prepared, out, threads, args.model, args.max_length)
            digests.append(summary["sha256"])
            print(json.dumps(row(summary, threads, args.cores)), flush=True)
        print(json.dumps({"same_bytes_for_every_thread_count": len(set(digests)) == 1}))


if __name__ == "__main__":
    main()
