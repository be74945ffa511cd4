"""Run the config's DAG without Snakemake: each missing artifact, in dependency order, through its stage's CLI.

For machines where Snakemake is not installed (the GPU box). Same plan, same keys, same artifacts as the Snakefile;
a finished artifact is never rerun. Logs go to ``results/logs/<stage>/<key>.log`` and wall times to
``results/benchmarks/run_plan.jsonl``.

    python -m stages.run_plan [--configfile config.yaml] [--results results] [-n]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stages.errors import PipelineError
from stages.plan import Node, Plan, load_config
from stages.store import MANIFEST, write_pointers


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


def run_node(node: Node, results: Path) -> float:
    out = node.path(results)
    log = results / "logs" / node.stage / f"{node.key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", f"stages.{node.stage}", str(out)]
    command += ["--params", json.dumps(node.params), "--inputs", json.dumps(node.input_paths(results))]
    started = time.time()
    with open(log, "w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    seconds = time.time() - started
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"stage {node.stage} ({node.key}) failed with exit code {code}; log {log}:\n{tail}")
    with open(results / "benchmarks" / "run_plan.jsonl", "a") as bench:
        bench.write(json.dumps({"stage": node.stage, "key": node.key, "seconds": round(seconds, 3)}) + "\n")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.run_plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", type=Path, default=Path("config.yaml"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("-n", "--dry-run", action="store_true", help="list what would run")
    args = parser.parse_args(argv)
    try:
        plan = Plan(load_config(args.configfile), args.results)
    except PipelineError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return 2
    todo = [node for node in ordered(plan) if not (node.path(args.results) / MANIFEST).is_file()]
    print(f"{len(todo)} of {len(plan.nodes())} artifacts to make")
    (args.results / "benchmarks").mkdir(parents=True, exist_ok=True)
    for number, node in enumerate(todo, start=1):
        print(f"[{number}/{len(todo)}] {node.stage} {node.key}", end="" if not args.dry_run else "\n", flush=True)
        if not args.dry_run:
            print(f"  {run_node(node, args.results):.1f} s", flush=True)
    if not args.dry_run:
        write_pointers(args.results, plan.pointers())
    return 0


if __name__ == "__main__":
    sys.exit(main())
