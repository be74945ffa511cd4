"""Each job's fixed cost: the seconds from its process's start to its work (``fixed_s`` in every summary.json's
``resources``), for every stage of a small DAG run as Snakemake runs it, one process a job.

Makes an MS MARCO-shaped dataset (`benchmarks/msmarco_synthetic.py`, ``--passages``; or takes ``--data``), writes a
config with the BM25 and STAR experiments (``--experiments``; negatives mined from BM25, STAR from the bundled encoder
for ``--steps`` steps; score and report on dev), runs it with ``python -m stages.pipeline.run_plan --isolate`` into ``--work``/results, then runs one job of
each CPU stage ``--repeat`` times more as its rule does (the artifact removed first; ``--reuse``: only these, on the
results there) and prints one JSON object (also written to ``--out``): per stage its fixed seconds (summary.json's
``fixed_s``: process start to work), its work's and the whole job's (process start to exit), the best of the runs.
The data are small, so fixed cost is most of each job.

    python benchmarks/fixed_cost.py [--work DIR] [--passages 3000 | --data DIR] [--experiments bm25,star] [--steps 2]
                                    [--repeat 5] [--reuse] [--only prepare,score] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import stages
from stages.core.declarations import STAGES

ROOT = Path(stages.__file__).resolve().parent.parent
"""The checkout whose `stages` this imports (PYTHONPATH): its stages run."""
CPU_PATHS = {"bm25"}
"""GPU stages that run on the CPU where no GPU is visible: rerun like the CPU stages (directly, not launched)."""


def config(data: Path, steps: int, experiments: list[str]) -> dict:
    return {
        "dataset": {"path": str(data), "format": "msmarco", "splits": ["train", "dev"], "dev_fraction": 0},
        "evaluate": {"splits": ["dev"]},
        "seeds": [1],
        "encoder": {"model": "bundled", "query_max_length": 16, "doc_max_length": 64},
        "encode": {"num_shards": 1},
        "mine": {"source": "bm25", "depth": 50},
        "star": {"init": "base", "max_steps": steps},
        "score": {"bootstrap_samples": 200},
        "experiments": [{"name": name, "method": name} for name in experiments],
    }


def run_dag(work: Path, args: argparse.Namespace) -> float:
    data = args.data or work / "data"
    if not data.is_dir():
        generator = [sys.executable, str(ROOT / "benchmarks" / "msmarco_synthetic.py"), str(data)]
        subprocess.run(generator + ["--passages", str(args.passages)], check=True, capture_output=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config(data, args.steps, args.experiments.split(","))))
    shutil.rmtree(work / "results", ignore_errors=True)
    command = [sys.executable, "-m", "stages.pipeline.run_plan", "--configfile", str(work / "config.yaml")]
    command += ["--results", str(work / "results"), "--isolate"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
    return time.perf_counter() - began


def rerun(artifact: Path) -> dict:
    """Make a CPU stage's artifact again, as its rule does (its own process, no GPU; a `CPU_PATHS` stage without
    the launcher): its fixed and work seconds (summary.json) and the job's seconds from start to exit."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    inputs = {name: value["path"] for name, value in manifest["inputs"].items()}
    command = [sys.executable, "-m", f"stages.{manifest['stage']}", str(artifact)]
    command += ["--params", json.dumps(manifest["params"]), "--inputs", json.dumps(inputs)]
    shutil.rmtree(artifact)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **STAGES[manifest["stage"]].env_vars()}
    began = time.perf_counter()
    subprocess.run(command, cwd=artifact.parent.parent.parent, env=env, check=True, capture_output=True)
    job = time.perf_counter() - began
    block = json.loads((artifact / "summary.json").read_text())["resources"]
    return {"fixed_s": block["fixed_s"], "work_s": block["wall_s"], "job_s": round(job, 3)}


def stage_rows(results: Path, repeat: int, only: set[str] | None = None) -> dict[str, dict]:
    """Per stage, its first artifact's fixed, work and job seconds: the best of ``repeat`` runs of a CPU stage's job
    (the DAG's own run for a GPU stage, and for every stage with ``repeat`` 0)."""
    rows = {}
    for summary in sorted(results.glob("*/*/summary.json")):
        stage = summary.parent.parent.name
        if stage in rows or stage not in STAGES or (only and stage not in only):
            continue
        block = json.loads(summary.read_text())["resources"]
        runs = [{"fixed_s": block["fixed_s"], "work_s": block["wall_s"]}]
        if (not STAGES[stage].gpu or stage in CPU_PATHS) and repeat:
            runs = [rerun(summary.parent) for _ in range(repeat)]
        rows[stage] = {
            "cpu_stage": not STAGES[stage].gpu or stage in CPU_PATHS,
            **{name: round(min(run[name] for run in runs), 2) for name in runs[0]},
            "fixed_s_runs": [run["fixed_s"] for run in runs],
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the data and results (default: a temporary one)")
    parser.add_argument("--passages", type=int, default=3000)
    parser.add_argument("--data", type=Path, help="an msmarco_synthetic.py folder to use (default: made in --work)")
    parser.add_argument("--experiments", default="bm25,star", help="methods, one experiment each: bm25, star")
    parser.add_argument("--steps", type=int, default=2, help="STAR steps")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each CPU stage's job after the DAG's")
    parser.add_argument("--reuse", action="store_true", help="rerun the jobs of --work's results, not the DAG")
    parser.add_argument("--only", help="comma-separated stages to report (default: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fixed-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds = None if args.reuse else round(run_dag(work, args), 1)
    rows = stage_rows(work / "results", args.repeat, set(args.only.split(",")) if args.only else None)
    result = {"dag_s": seconds, "threads": len(os.sched_getaffinity(0)), "stages": rows}
    if args.work is None:
        shutil.rmtree(work)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
