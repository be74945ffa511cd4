"""Garbage collection of the artifact store: ``python -m stages.pipeline.prune`` lists (and with ``--yes`` removes) artifacts
that the given runs' configs no longer reach, and what killed jobs left behind.

Apart from `stages.core.store` because it needs the plan (which needs the store); not named ``gc``, which would shadow
Python's own ``gc`` module wherever ``stages/`` is on the path.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..core.errors import PipelineError
from .dag import Plan
from .config import load_configs
from ..core.store import iter_artifacts, leftovers


def reached_by(results: Path, runs: list[list[Path]]) -> set[Path]:
    """The artifacts of each run's plan (its config files layered as ``run_plan`` and the Snakefile do), united."""
    reached: set[Path] = set()
    for files in runs:
        paths = {node.path(results).resolve() for node in Plan(load_configs(files), results, dry_run=True).nodes()}
        present = sum(1 for path in paths if path.is_dir())
        print(f"protected by {' + '.join(map(str, files))}: {present} artifacts ({len(paths)} in its plan)")
        reached |= paths
    return reached


def unreachable(results: Path, reachable: set[Path]) -> list[Path]:
    reachable = {Path(p).resolve() for p in reachable}
    return [a for a in iter_artifacts(results) if a.resolve() not in reachable]


def prune(results: Path, runs: list[list[Path]] | None, yes: bool) -> int:
    if not runs:
        runs = [[Path("config.yaml")]]
        print("no --configfile given: keeping what config.yaml reaches")
    try:
        reached = reached_by(results, runs)
    except PipelineError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return 2
    stale, left = unreachable(results, reached), leftovers(results)
    doomed = stale + [folder for folder, _, removable in left if removable]
    for artifact in stale:
        print(f"remove {artifact}: no config above reaches it")
    for folder, what, removable in left:
        print(f"{'remove' if removable else 'keep'} {folder}: {what}")
    if not doomed:
        print("nothing to remove")
    elif yes:
        for folder in doomed:
            shutil.rmtree(folder)
        print(f"removed {len(doomed)} folders")
    else:
        print(f"{len(doomed)} folders to remove; rerun with --yes to remove them")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.pipeline.prune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument(
        "--configfile", type=Path, nargs="+", action="append", metavar="FILE",
        help="the config files of one run, layered as the run did (later win); repeat for each run to keep "
        "(default: config.yaml)",
    )  # fmt: skip
    parser.add_argument("--yes", action="store_true", help="remove what is listed")
    args = parser.parse_args(argv)
    return prune(args.results, args.configfile, args.yes)


if __name__ == "__main__":
    sys.exit(main())
