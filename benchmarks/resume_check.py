"""Does a trainer stopped abruptly and resumed end with the weights of an uninterrupted run, on this machine's device?

Takes one training artifact of a config whose inputs are already made (e.g. after ``python -m stages.pipeline.run_plan``),
and runs its stage three times outside the store: twice straight through, and once stopped after ``--stop-after``
steps (``HARDNEG_STOP_AFTER_STEP``: the process exits at once, as a kill would) and started again, resuming from
its last checkpoint. On the CPU the resumed run is bitwise the straight one (tests/test_train_*.py); on a GPU some
kernels are not deterministic from run to run, so the two straight runs measure that noise and the resumed run is
compared against it.

    python3 benchmarks/resume_check.py --configfile workflow/configs/large-batch-scifact.yaml \
        --experiment star-listwise --seed 1 --role star --stop-after 97 --checkpoint-every 50 --out resume.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from stages.pipeline.dag import Plan
from stages.pipeline.config import load_configs
from stages.ml.training import STOP_AFTER_ENV, STOPPED_EXIT_CODE


def model_tensors(artifact: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted((artifact / "model").rglob("*.safetensors")):
        tensors.update({f"{file.parent.name}/{k}": v.float() for k, v in load_file(file).items()})
    return tensors


def difference(first: Path, second: Path) -> dict[str, float | bool]:
    """Largest absolute and relative (to the tensor's largest value) weight difference; whether all are equal."""
    a, b = model_tensors(first), model_tensors(second)
    assert a.keys() == b.keys(), "the two artifacts hold different tensors"
    absolute = max((a[k] - b[k]).abs().max().item() for k in a)
    relative = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)
    return {"bitwise_equal": all(torch.equal(a[k], b[k]) for k in a), "max_abs": absolute, "max_rel": relative}


def run_stage(command: list[str], env: dict[str, str], expect: int) -> float:
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != expect:
        sys.exit(f"{' '.join(command[:3])} exited {done.returncode}, expected {expect}:\n{done.stderr[-3000:]}")
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", type=Path, nargs="+", required=True)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--role", default="star", help="the chain's role of the trainer: warmup, star or adore")
    parser.add_argument("--stop-after", type=int, required=True)
    parser.add_argument("--checkpoint-every", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    plan = Plan(load_configs(args.configfile), args.results)
    node = plan.experiments[f"{args.experiment}/seed-{args.seed}"][args.role]
    params = {**node.params, "checkpoint_every": args.checkpoint_every}
    scratch = Path(tempfile.mkdtemp(prefix="resume-check-"))
    env = {k: v for k, v in os.environ.items() if k != STOP_AFTER_ENV}

    def command(name: str) -> list[str]:
        return [sys.executable, "-m", f"stages.{node.stage}", str(scratch / name), "--no-check-key",
                "--params", json.dumps(params), "--inputs", json.dumps(node.input_paths(args.results))]

    seconds = {name: run_stage(command(name), env, 0) for name in ("straight-1", "straight-2")}
    seconds["stopped"] = run_stage(command("resumed"), env | {STOP_AFTER_ENV: str(args.stop_after)}, STOPPED_EXIT_CODE)
    seconds["resumed"] = run_stage(command("resumed"), env, 0)
    summary = json.loads((scratch / "resumed" / "summary.json").read_text())
    result = {
        "stage": node.stage,
        "experiment": f"{args.experiment}/seed-{args.seed}",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "steps": summary["steps"],
        "stopped_after_step": args.stop_after,
        "resumed_from_step": summary["resumed_from_step"],
        "straight_vs_straight": difference(scratch / "straight-1", scratch / "straight-2"),
        "straight_vs_resumed": difference(scratch / "straight-1", scratch / "resumed"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
