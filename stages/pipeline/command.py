"""The `hardneg` command: ``run`` (snakemake with the packaged workflow and its default profile), ``status``,
``compare``, ``export``, ``verify`` and ``gc``. The last three wrap the export stage's artifacts,
`stages.core.store` and `stages.pipeline.prune`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..core.errors import ConfigError, PipelineError
from ..core.store import verify_command
from ..core.artifacts import RUN_TREC
from ..core.workflow_files import workflow_root
from .compare import DEFAULT_MEASURES, Judgments, compare, render, run_tag
from .dag import Plan
from .config import load_configs, read_config_file
from .prune import prune

CONFIG = Path("config.yaml")


def run(snakemake_args: list[str]) -> int:
    """Snakemake in this folder with the packaged Snakefile and default profile (config.yaml here is the config).
    Config files given with ``--configfile`` are read first, so that a missing file or a YAML error is named with its
    line (Snakemake's own message names neither)."""
    for path in configfile_args(snakemake_args):
        read_config_file(path)
    root = workflow_root()
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile")]
    command += ["--workflow-profile", str(root / "workflow" / "profiles" / "default"), *snakemake_args]
    # the rules' `python -m <package>.<stage>`: this interpreter's
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.call(command, env={**os.environ, "PATH": path})


def configfile_args(args: list[str]) -> list[Path]:
    """The files of Snakemake's ``--configfile`` / ``--configfiles`` options (``--configfile=A`` too) in ``args``."""
    files, taking = [], False
    for arg in args:
        name, equals, value = arg.partition("=")
        if name in ("--configfile", "--configfiles"):
            taking = not equals
            files += [Path(value)] if equals else []
        elif arg.startswith("-"):
            taking = False
        elif taking:
            files.append(Path(arg))
    return files


def plan_of(configfiles: list[Path] | None, results: Path) -> Plan:
    return Plan(load_configs(configfiles or [CONFIG]), results, dry_run=True)


def status(plan: Plan, results: Path) -> int:
    """Each experiment's artifacts by role, made or missing."""
    missing_total = 0
    for experiment, roles in plan.pointers_nodes().items():
        missing = [role for role, node in roles.items() if not node.path(results).is_dir()]
        missing_total += len(missing)
        print(f"{experiment or '(all)'}: {len(roles) - len(missing)} of {len(roles)} artifacts")
        for role, node in roles.items():
            print(f"  {'missing' if role in missing else 'made   '} {role:<24} {node.path(results)}")
    print(f"{missing_total} missing" + (": hardneg run makes them" if missing_total else ""))
    return 0


def export(plan: Plan, results: Path, destination: Path) -> int:
    """Each experiment's runs as TREC files tagged with the experiment (runs/<tag>.<split>.trec), and its exported
    model (models/<tag>) where the experiment has `export: true` and the run made it."""
    blocking = next((path for path in [destination, *destination.parents] if path.exists() and not path.is_dir()), None)
    if blocking is not None:
        fix = "give a folder to export into (made if missing), or move the file"
        where = "" if blocking == destination else f" (in the way of {destination})"
        raise ConfigError(f"a file, not a folder{where}", path=blocking, fix=fix)
    written = 0
    for experiment, roles in plan.experiments.items():
        tag = run_tag(experiment)
        for role, node in roles.items():
            if role.startswith("score-") and (node.inputs["run"].path(results) / RUN_TREC).is_file():
                target = destination / "runs" / f"{tag}.{role.removeprefix('score-')}.trec"
                written += retag(node.inputs["run"].path(results) / RUN_TREC, target, tag)
            elif node.stage == "export" and node.path(results).is_dir():
                shutil.copytree(node.path(results), destination / "models" / tag, dirs_exist_ok=True)
                written += 1
    print(f"{written} files and folders in {destination}" + ("" if written else ": nothing made yet (hardneg run)"))
    return 0


def retag(run_trec: Path, target: Path, tag: str) -> int:
    """A copy of a TREC run file with ``tag`` as every line's tag."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(run_trec) as source, open(target, "w") as out:
        for line in source:
            out.write(f"{line.rsplit(maxsplit=1)[0]} {tag}\n")
    return 1


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="hardneg", description=__doc__.split("\n\n")[0])
    commands = main.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="snakemake with the packaged workflow (other arguments go to snakemake)")
    for name, text in (
        ("status", "experiments, their artifacts and what is missing"),
        ("export", "tagged runs and models"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--configfile", type=Path, nargs="+", help="config files, layered (default: config.yaml)")
        sub.add_argument("--results", type=Path, default=Path("results"))
    commands.choices["export"].add_argument("destination", type=Path)
    cmp = commands.add_parser("compare", help="measures, paired tests and Holm's correction over any runs")
    cmp.add_argument("runs", type=Path, nargs="+", help="TREC run files, run artifacts or score artifacts")
    cmp.add_argument("--qrels", type=Path, help="a TREC qrels file or a prepare artifact (with --split)")
    cmp.add_argument("--split", default="test")
    cmp.add_argument("--measures", nargs="+", default=DEFAULT_MEASURES)
    cmp.add_argument("--relevance-level", type=int, default=1)
    cmp.add_argument("--samples", type=int, default=10000, help="random sign flips of the paired test")
    cmp.add_argument("--json", action="store_true")
    verify = commands.add_parser("verify", help="re-hash every artifact")
    verify.add_argument("--results", type=Path, default=Path("results"))
    gc = commands.add_parser("gc", help="remove artifacts the configs no longer reach (python -m ...pipeline.prune)")
    gc.add_argument("--results", type=Path, default=Path("results"))
    gc.add_argument("--configfile", type=Path, nargs="+", action="append", metavar="FILE")
    gc.add_argument("--yes", action="store_true")
    return main


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "status":
        return status(plan_of(args.configfile, args.results), args.results)
    if args.command == "export":
        return export(plan_of(args.configfile, args.results), args.results, args.destination)
    if args.command == "compare":
        judgments = Judgments(args.qrels, args.split, args.relevance_level)
        result = compare(args.runs, judgments, args.measures, args.samples)
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        print(render(result, args.json))
        return 0
    if args.command == "verify":
        return verify_command(args.results)
    return prune(args.results, args.configfile, args.yes)


def main(argv: list[str] | None = None) -> int:
    try:
        args, snakemake_args = parser().parse_known_args(argv)
        if args.command == "run":
            return run(snakemake_args)
        return dispatch(parser().parse_args(argv))
    except PipelineError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
