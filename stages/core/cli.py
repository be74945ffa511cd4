"""The thin command line shared by every stage: ``python -m stages.<stage> OUT --params JSON --inputs JSON``."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from .. import PACKAGE
from .errors import ConfigError, PipelineError
from .log_lines import KeptWarnings, line_by_line_stderr
from .resources import Meter
from .store import artifact_lock, made_already, write_artifact

P = TypeVar("P")
log = logging.getLogger("stages")


def build_params(cls: type[P], values: Mapping[str, Any], stage: str) -> P:
    """The stage's typed params from a mapping that must name every field (so every knob is in the key)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = sorted(set(values) - names), sorted(names - set(values))
    if unknown or missing:
        raise ConfigError(
            f"stage {stage!r} got unknown params {unknown} and lacks params {missing}",
            fix=f"pass exactly these params: {sorted(names)}",
        )
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """A stage's command line, read."""

    out: Path
    values: dict[str, Any]
    """The params as given (they go into the key)."""
    params: Any
    """The same, typed (`build_params`)."""
    inputs: dict[str, Path]
    check_key: bool


def parse_stage_args(stage: str, params_cls: type, argv: list[str] | None = None) -> StageArgs:
    """``OUT --params JSON --inputs JSON [--no-check-key]``; the params must name every field (`build_params`)."""
    parser = argparse.ArgumentParser(prog=f"python -m {PACKAGE}.{stage}")
    parser.add_argument("out", type=Path, help="artifact directory to create (results/<stage>/<key>)")
    parser.add_argument("--params", required=True, help="JSON object with every parameter of the stage")
    parser.add_argument("--inputs", default="{}", help="JSON object: input name -> path")
    parser.add_argument("--no-check-key", action="store_true", help="allow an output directory not named by its key")
    args = parser.parse_args(argv)
    values = json.loads(args.params)
    inputs = {name: Path(path) for name, path in json.loads(args.inputs).items()}
    return StageArgs(args.out, values, build_params(params_cls, values, stage), inputs, not args.no_check_key)


def setup_logging() -> None:
    line_by_line_stderr()  # before the handler takes sys.stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_stage(
    stage: str,
    params_cls: type[P],
    work: Callable[[P, Mapping[str, Path], Path], Mapping[str, Any] | None],
    argv: list[str] | None = None,
) -> int:
    """Parse the CLI, run ``work(params, inputs, tmp_dir)`` inside an atomic artifact write, report user errors.

    A ``work`` function that takes ``work_dir`` gets ``results/work/<stage>/<key>/``: a folder that is not a
    Snakemake output (so it survives a failed or killed job) for checkpoints; it is removed once the artifact exists.
    One process at a time makes an artifact (a lock per key); one that waited reuses what the other made.
    """
    setup_logging()
    try:
        args = parse_stage_args(stage, params_cls, argv)
        values, params, inputs = args.values, args.params, args.inputs
        with artifact_lock(args.out):
            if made_already(args.out, stage, values, inputs):
                log.info("%s exists already (made by another process meanwhile?); reusing it", args.out)
                return 0
            with write_artifact(args.out, stage, values, inputs, check_key=args.check_key) as tmp:
                work_dir = work_dir_for(args.out, stage)
                meter = Meter()  # wall time, items/s, peak memory: summary.json's "resources"
                with KeptWarnings() as warnings:
                    if "work_dir" in inspect.signature(work).parameters:
                        work_dir.mkdir(parents=True, exist_ok=True)
                        extra = work(params, inputs, tmp, work_dir=work_dir)
                    else:
                        extra = work(params, inputs, tmp)
                summary = meter.merge({**(extra or {}), **warnings.summary()})
                (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    except PipelineError as error:
        print(f"error in stage {stage}: {error.render()}", file=sys.stderr)
        return 2
    shutil.rmtree(work_dir, ignore_errors=True)
    log.info("wrote %s", args.out)
    return 0


def work_dir_for(out: Path, stage: str) -> Path:
    """``results/<stage>/<key>`` -> ``results/work/<stage>/<key>``."""
    return Path(out).parent.parent / "work" / stage / Path(out).name
