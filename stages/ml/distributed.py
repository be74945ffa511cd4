"""Multi-process (DistributedDataParallel) training: the process group from torchrun's environment, rank helpers, the
global batch split across ranks, a differentiable all-gather, and the trainers' entry point.

A trainer runs as ``torchrun --standalone --nproc_per_node N -m stages.<trainer> <its usual arguments>``: torchrun sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without WORLD_SIZE (or with 1) nothing here does anything
and every helper answers as for one process. Backend: nccl on CUDA (device cuda:LOCAL_RANK), gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..core import cli
from ..core.errors import ConfigError, PipelineError


def requested() -> bool:
    """Whether the environment asks for several processes (torchrun's WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init_from_env() -> bool:
    """Join the process group that torchrun's environment describes; False (and nothing done) for one process."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not requested():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """Rank 0: the one process that logs, shows progress and writes files."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """This rank's training device: cuda:LOCAL_RANK (plain cuda for one process), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank()) if active() else torch.device("cuda")


# --- the global batch across ranks -------------------------------------------------------------------------------


def rank_slices(count: int) -> list[slice]:
    """Contiguous slices of ``count`` rows, one per rank (the first ``count % world_size`` ranks get one more)."""
    size = world_size()
    if count < size:
        raise ConfigError(f"a batch of {count} queries cannot be split across {size} processes", fix="raise batch_size")
    bounds = [r * (count // size) + min(r, count % size) for r in range(size + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def local_slice(count: int) -> slice:
    """This rank's slice of a global batch of ``count`` rows (all of it for one process)."""
    return rank_slices(count)[rank()]


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows (row counts may differ); backward hands each rank the gradient of its own rows,
    summed over the ranks, since every rank's loss depends on every rank's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        counts = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(world_size())]
        dist.all_gather(counts, torch.tensor([len(tensor)], device=tensor.device))
        counts = [int(c) for c in counts]
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.rows = slice(sum(counts[: rank()]), sum(counts[: rank() + 1]))
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, with gradients back to the local rows."""
    return _GatherRows.apply(tensor) if active() else tensor


def all_sum(values: list[float], on: torch.device | None = None) -> list[float]:
    """Element-wise sums over the ranks of small per-rank numbers (as they are for one process)."""
    if not active():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=on or device())
    dist.all_reduce(total)
    return total.tolist()


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``tensor`` summed over the ranks."""
    total = tensor.detach().clone()
    if active():
        dist.all_reduce(total)
    return total


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable, small), in rank order."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


# --- the model -----------------------------------------------------------------------------------------------------


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP around ``model`` (already on its device) when several processes train; the model itself otherwise.

    static_graph: the encoder's pooler layer (if the checkpoint has one) never gets a gradient, and every step runs
    the same graph (STAR calls the model twice per step); this covers both without find_unused_parameters' per-step
    walk of the graph."""
    if not active():
        return model
    on = next(model.parameters()).device
    # broadcast_buffers off: the buffers (BERT's position and token-type ids) are constants, and broadcasting them in
    # place at every forward breaks backward when a step runs the model more than once (queries, then documents)
    return DistributedDataParallel(
        model, device_ids=[on.index] if on.type == "cuda" else None, static_graph=True, broadcast_buffers=False
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# --- the entry point -----------------------------------------------------------------------------------------------


def run_stage(
    stage: str, params_cls: type, work: Callable[..., Mapping[str, Any] | None], argv: list[str] | None = None
) -> int:
    """`stages.core.cli.run_stage` for a trainer, under torchrun or not.

    Rank 0 runs it as usual (it alone writes the artifact and removes the work folder); the other ranks run ``work``
    with the same params, inputs and work folder (to resume from) into a scratch folder that is then dropped."""
    if not init_from_env():
        return cli.run_stage(stage, params_cls, work, argv)
    try:
        if is_main():
            return cli.run_stage(stage, params_cls, work, argv)
        return _run_other_rank(stage, params_cls, work, argv)
    finally:
        shutdown()


def _run_other_rank(stage: str, params_cls: type, work: Callable[..., Any], argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank {rank()} %(levelname)s %(name)s: %(message)s")
    try:
        args = cli.parse_stage_args(stage, params_cls, argv)
        with tempfile.TemporaryDirectory(prefix=f"{stage}-rank{rank()}-") as scratch:
            work(args.params, args.inputs, Path(scratch), work_dir=cli.work_dir_for(args.out, stage))
    except PipelineError as error:
        print(f"error in stage {stage} (rank {rank()}): {error.render()}", file=sys.stderr)
        return 2
    return 0
