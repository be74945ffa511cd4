"""Several GPUs of one host, through snakemake: trainers under torchrun, and encode shard jobs one per GPU.

1. ``train``: `workflow/configs/multi-gpu.yaml` (STAR and ADORE+STAR as in paper.yaml, 3 seeds) with every trainer
   given all ``--gpus`` (``--set-resources train_*:gpu=N``: `stages.core.launch` runs it under torchrun, DDP, same global
   batch). Keeps each training artifact's summary.json (processes, steps, seconds, queries/s, peak memory), the
   report and the snakemake log.
2. ``shards``: SciFact's documents repeated to ``--docs`` (`benchmarks/repeated_corpus.py`),
   `workflow/configs/encode-shards.yaml` (2 shards) made up to the tokens, then the shard jobs timed with
   ``--resources gpu=N`` (both at once, each on its own GPU) against ``gpu=1`` (one after the other on one GPU).

Each part's snakemake runs in the repository root and leaves its results moved to ``results-<part>[-<gpus>]``.
Writes ``multi_gpu.json`` and logs to ``--out``. Needs snakemake and the model at the configs' path.

    python benchmarks/multi_gpu.py --gpus 2 --out OUT [--parts train shards] [--docs 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from repeated_corpus import write_repeated

from stages.core.declarations import STAGES  # noqa: E402

TRAINERS = [stage.name for stage in STAGES.values() if stage.distributed]

RESULTS = Path("results")


def snakemake(args: list[str], gpus: int, log: Path, timeout: float) -> dict:
    """One timed snakemake run (exit code, seconds)."""
    command = [sys.executable, "-m", "snakemake", "--cores", "all", "--workflow-profile", "workflow/profiles/default",
               "--resources", f"gpu={gpus}", *args]
    began = time.perf_counter()
    with open(log, "w") as handle:
        try:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    return {"command": " ".join(command[2:]), "exit": code, "seconds": round(time.perf_counter() - began, 2)}


def summaries(results: Path, stages: tuple[str, ...]) -> list[dict]:
    rows = []
    for stage in stages:
        for path in sorted((results / stage).glob("*/summary.json")):
            rows.append({"stage": stage, "key": path.parent.name, **json.loads(path.read_text())})
    return rows


def train_part(gpus: int, out: Path, timeout: float) -> dict:
    resources = [f"{trainer}:gpu={gpus}" for trainer in TRAINERS]
    run = snakemake(["--configfile", "workflow/configs/multi-gpu.yaml", "--set-resources", *resources], gpus,
                    out / "train-snakemake.log", timeout)
    run["trainers"] = summaries(RESULTS, TRAINERS)
    report = RESULTS / "runs" / "report"
    if report.is_dir():
        shutil.copytree(report, out / "train-report", dirs_exist_ok=True)
    RESULTS.rename(f"results-train-{gpus}gpu")
    return run


def shards_part(gpus: int, docs: int, out: Path, timeout: float) -> dict:
    config = ["--configfile", "workflow/configs/encode-shards.yaml"]
    began = time.perf_counter()
    write_repeated(docs, Path("/tmp/scifact-repeated"))
    part: dict = {"documents": docs, "write_seconds": round(time.perf_counter() - began, 2)}
    part["tokens"] = snakemake([*config, "--until", "tokenize_corpus"], 1, out / "shards-tokenize.log", timeout)
    base = Path("results-shards-base")
    RESULTS.rename(base)
    for count in (gpus, 1):
        shutil.copytree(base, RESULTS, symlinks=True)
        run = snakemake([*config, "--until", "encode_corpus"], count, out / f"shards-{count}gpu.log", timeout)
        run["jobs"] = summaries(RESULTS, ("encode",))
        part[f"{count}gpu"] = run
        RESULTS.rename(f"results-shards-{count}gpu")
    return part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--parts", nargs="+", default=["train", "shards"], choices=["train", "shards"])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for each snakemake run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if RESULTS.exists():
        raise SystemExit(f"{RESULTS}/ exists: move it away first (each part starts from an empty results folder)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    result: dict = {"gpus": args.gpus}
    for name in args.parts:
        if name == "train":
            result["train"] = train_part(args.gpus, args.out, args.timeout)
        else:
            result["shards"] = shards_part(args.gpus, args.docs, args.out, args.timeout)
        (args.out / "multi_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
