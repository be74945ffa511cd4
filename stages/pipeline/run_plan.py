"""Run the config's DAG without Snakemake: each missing artifact, in dependency order, through its stage's CLI.

For machines where Snakemake is not installed (the GPU box). Same plan, same keys, same artifacts as the Snakefile;
a finished artifact is never rerun. Logs go to ``results/logs/<stage>/<key>.log`` and wall times to
``results/benchmarks/run_plan.jsonl``.

Stages run in this process by default (torch, CUDA and the tokenizer start once, not once per stage: on the H100
that saves ~10 s a stage); ``--isolate`` runs each in its own process, as Snakemake does. ``--train-gpus N`` (N > 1)
runs the training stages on N GPUs through `stages.core.launch` (torchrun, DDP), as a rule given ``gpu: N`` would.

    python -m stages.pipeline.run_plan [--configfile config.yaml [more.yaml ...]] [--results results] [-n] [--isolate]
                              [--train-gpus N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ..core.declarations import STAGES
from ..core.errors import PipelineError
from .dag import Node, Plan
from .config import load_configs
from ..core.store import write_pointers
from ..core.artifacts import MANIFEST


class StageFailed(Exception):
    pass


def ordered(plan: Plan) -> list[Node]:
    """Every node after its inputs (depth-first from each experiment's nodes)."""
    seen: dict[tuple[str, str], Node] = {}

    def visit(node: Node) -> None:
        if (node.stage, node.key) in seen:
            return
        for item in node.inputs.values():
            if isinstance(item, Node):
                visit(item)
        seen[(node.stage, node.key)] = node

    for node in plan.nodes():
        visit(node)
    return list(seen.values())


def stage_env(stage: str) -> dict[str, str]:
    """The environment of a stage's own process: CPU-only stages see no GPU, as their rules set it."""
    return os.environ | STAGES[stage].env_vars()


def stage_command(stage: str, argv: list[str], train_gpus: int = 1) -> list[str]:
    """The stage's command as its rule starts it; the stages that can run distributed on ``train_gpus`` GPUs."""
    declared = STAGES[stage]
    return declared.command(argv, train_gpus if declared.distributed else 1)


def run_node(node: Node, results: Path, isolate: bool = False, train_gpus: int = 1) -> float:
    out = node.path(results)
    log = results / "logs" / node.stage / f"{node.key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(out), "--params", json.dumps(node.params), "--inputs", json.dumps(node.input_paths(results))]
    started = time.time()
    with open(log, "a") as handle:
        if isolate or (train_gpus > 1 and STAGES[node.stage].distributed):
            command = stage_command(node.stage, argv, train_gpus)
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=stage_env(node.stage)).returncode
        else:
            code = run_in_process(node.stage, argv, handle)
    seconds = time.time() - started
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise StageFailed(f"stage {node.stage} ({node.key}) failed with exit code {code}; log {log}:\n{tail}")
    (results / "benchmarks").mkdir(parents=True, exist_ok=True)
    with open(results / "benchmarks" / "run_plan.jsonl", "a") as bench:
        bench.write(json.dumps({"stage": node.stage, "key": node.key, "seconds": round(seconds, 3)}) + "\n")
    return seconds


def stage_entry(stage: str):
    """What ``python -m stages.<stage>`` runs: the module, or a package stage's ``__main__`` (both have ``main``)."""
    module = importlib.import_module(f"..{stage}", __package__)
    return importlib.import_module(f"{module.__name__}.__main__") if hasattr(module, "__path__") else module


def run_in_process(stage: str, argv: list[str], handle) -> int:
    """``main(argv)`` of `stage_entry` with its output and logging going to ``handle``; an exception is a failure."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [logging.StreamHandler(handle)]
    root.handlers[0].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            return stage_entry(stage).main(argv)
    except Exception:  # noqa: BLE001 - a stage's crash is reported with its traceback in its log
        traceback.print_exc(file=handle)
        return 1
    finally:
        root.handlers = saved
        gc.collect()
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            sys.modules["torch"].cuda.empty_cache()


def partial_report(plan: Plan, results: Path) -> None:
    """The report over the scores that exist, into ``results/report-partial`` (not a store artifact)."""
    from ..report.stage import ReportParams, report

    inputs = plan.report.input_paths(results)
    params = dict(plan.report.params)
    params["rows"] = [row for row in params["rows"] if (Path(inputs[row["score"]]) / MANIFEST).is_file()]
    params["rows"] = [r for r in params["rows"] if all((Path(inputs[t]) / MANIFEST).is_file() for t in r["train"])]
    if not params["rows"]:
        return
    if params["reference"] not in {row["variant"] for row in params["rows"]}:
        params["reference"] = ""
    out = results / "report-partial"
    out.mkdir(parents=True, exist_ok=True)
    report(ReportParams(**params), {name: Path(path) for name, path in inputs.items()}, out)
    print(f"partial report over {len(params['rows'])} scored runs: {out}/results.md", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.pipeline.run_plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", type=Path, nargs="+", default=[Path("config.yaml")], help="later files win")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("-n", "--dry-run", action="store_true", help="list what would run")
    parser.add_argument("--isolate", action="store_true", help="run each stage in its own process")
    parser.add_argument("--train-gpus", type=int, default=1, help="GPUs for each training stage (DDP when > 1)")
    parser.add_argument("--deadline", type=float, default=0, help="start nothing new after this many seconds")
    parser.add_argument("-k", "--keep-going", action="store_true", help="after a failure, go on with what does not need it")
    args = parser.parse_args(argv)
    try:
        plan = Plan(load_configs(args.configfile), args.results, dry_run=args.dry_run)
    except PipelineError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return 2
    todo = [node for node in ordered(plan) if not (node.path(args.results) / MANIFEST).is_file()]
    print(f"{len(todo)} of {len(plan.nodes())} artifacts to make")
    failed: dict[str, str] = {}  # key -> why
    began = time.time()
    for number, node in enumerate(todo, start=1):
        print(f"[{number}/{len(todo)}] {node.stage} {node.key}", end="" if not args.dry_run else "\n", flush=True)
        if args.dry_run:
            continue
        broken = [item.key for item in node.inputs.values() if isinstance(item, Node) and item.key in failed]
        if args.deadline and time.time() - began > args.deadline:
            failed[node.key] = f"skipped: past the {args.deadline} s deadline"
            print(f"  {failed[node.key]}", flush=True)
            continue
        if broken:
            failed[node.key] = f"skipped: input {broken[0]} failed"
            print(f"  {failed[node.key]}", flush=True)
            continue
        try:
            print(f"  {run_node(node, args.results, args.isolate, args.train_gpus):.1f} s", flush=True)
        except StageFailed as error:
            failed[node.key] = str(error)
            print(f"  FAILED\n{error}", flush=True)
            if not args.keep_going:
                break
    if args.dry_run:
        return 0
    made = {
        name: {role: n.path(args.results) for role, n in roles.items() if (n.path(args.results) / MANIFEST).is_file()}
        for name, roles in plan.pointers_nodes().items()
    }
    write_pointers(args.results, {name: roles for name, roles in made.items() if roles})
    for line in plan.recorded_warnings():
        print(line, file=sys.stderr)
    if failed:
        print(f"{len(failed)} artifacts not made (failed or skipped); see results/logs", file=sys.stderr)
        if plan.report.key in failed:
            partial_report(plan, args.results)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
