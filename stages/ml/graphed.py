"""A training step captured once in a CUDA graph and replayed, for steps whose shapes never change (ADORE's).

A small step is bound by the host: the Python of the model's modules and the launch of each of its few hundred kernels
take longer than the GPU's work (32 queries of MiniLM: ~20 ms of host time for a few ms of GPU work). A CUDA graph
records the kernels of one whole step (forward, loss, backward, gradient clipping, AdamW) once; each step then copies
its query index into the graph's input and replays it with one launch.

What the step needs: a `FixedShapeStep`, i.e. the host picks the step's rows (``batch_index``) and a function of
(model, index tensor) computes the loss with shapes that depend on nothing else (``loss_at``), with no read back
to the host. The learning rate of each parameter group lives in a device tensor that the graph reads, filled from the
scheduler's value before every replay. Capturing needs a few eager steps first (on a side stream, as torch's docs
prescribe); their effect on the weights, the optimiser state and the CUDA RNG is undone before the first real step,
so training starts from the same state as the eager loop. Dropout inside the graph draws from torch's graph-safe
CUDA generator, whose offset advances at every replay.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

GRAPHS_ENV = "HARDNEG_CUDA_GRAPHS"
"""Set to 0 to train every step eagerly (to compare, or to debug a model that cannot be captured)."""
WARMUP_STEPS = 3
"""Eager steps before the capture (undone afterwards): lazily built state (the optimiser's moments, cuBLAS
workspaces, autocast's choices) exists before recording."""


@dataclass
class FixedShapeStep:
    """A trainer's step, split for capture: the host part and a device part with shapes fixed for the whole run."""

    batch_size: int
    """The rows of every step."""
    batch_index: Callable[[int, int], np.ndarray]
    """(epoch, batch) -> the step's int64 row index, ``batch_size`` long."""
    loss_at: Callable[[torch.nn.Module, torch.Tensor], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
    """(model, index on the device) -> (loss, 0-dim tensors to log), reading nothing back to the host."""


def graphs_wanted(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(GRAPHS_ENV, "1") != "0"


class GraphedStep:
    """One optimiser step of ``step`` on ``model`` recorded in a CUDA graph; `run` replays it on a new index."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        step: FixedShapeStep,
        grad_clip: float,
        autocast: bool,
    ):
        self.device = next(model.parameters()).device
        self.optimizer = optimizer
        self.index = torch.zeros(step.batch_size, dtype=torch.int64, device=self.device)  # row 0 for the eager steps
        self.lrs = [torch.tensor(float(group["lr"]), device=self.device) for group in optimizer.param_groups]
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        max_norm = grad_clip if grad_clip > 0 else float("inf")

        def body() -> dict[str, torch.Tensor]:
            # autocast's weight cache must be off: cached casts made outside the graph would be freed under it
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
                loss, extras = step.loss_at(model, self.index)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
            optimizer.step()
            return {"loss": loss.detach(), "grad_norm": grad_norm, **extras}

        saved = _State.take(model, optimizer, self.device)
        plain = [(group["lr"], group.get("capturable", False)) for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, self.lrs):
            group["lr"], group["capturable"] = lr, True  # the graph reads the rate from the tensor
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # the graph allocates the gradients and writes them at each replay
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = body()
        finally:
            for group, (lr, capturable) in zip(optimizer.param_groups, plain):
                group["lr"], group["capturable"] = lr, capturable  # floats again for the scheduler and checkpoints
            saved.restore()

    def run(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """Replay the step on the rows ``index`` at the optimiser's current learning rates; the logged values, copied
        out of the graph's buffers (the next replay overwrites those). Nothing waits for the device."""
        for tensor, group in zip(self.lrs, self.optimizer.param_groups):
            tensor.fill_(float(group["lr"]))
        # pinned, so the copy is queued without waiting; the caching host allocator keeps the buffer until it is done
        self.index.copy_(torch.from_numpy(np.asarray(index, dtype=np.int64)).pin_memory(), non_blocking=True)
        self.graph.replay()
        return {name: value.clone() for name, value in self.outputs.items()}


@dataclass
class _State:
    """Weights, optimiser state and CUDA RNG state, to undo the eager steps that precede a capture."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    weights: list[torch.Tensor]
    moments: dict[int, dict[str, torch.Tensor]]
    rng: torch.Tensor

    @classmethod
    def take(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> _State:
        weights = [p.detach().clone() for p in model.parameters()]
        moments = {
            id(p): {name: value.detach().clone() for name, value in optimizer.state[p].items() if torch.is_tensor(value)}
            for group in optimizer.param_groups
            for p in group["params"]
            if p in optimizer.state
        }
        return cls(model, optimizer, device, weights, moments, torch.cuda.get_rng_state(device))

    def restore(self) -> None:
        """In place, so that the graph keeps reading and writing the same memory."""
        with torch.no_grad():
            for parameter, saved in zip(self.model.parameters(), self.weights):
                parameter.copy_(saved)
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    before = self.moments.get(id(p), {})
                    for name, value in self.optimizer.state.get(p, {}).items():
                        if torch.is_tensor(value):
                            # a state made by the eager steps (none before them) starts at zero: AdamW's fresh state
                            value.copy_(before[name]) if name in before else value.zero_()
        torch.cuda.set_rng_state(self.rng, self.device)
