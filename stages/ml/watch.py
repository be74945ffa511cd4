"""What a training run shows while it runs: dev evaluation with the best checkpoint kept by dev (the paper selects
checkpoints so), and TensorBoard event files beside ``train_log.parquet`` when ``tensorboard`` is installed."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.artifacts import TENSORBOARD_DIR

log = logging.getLogger("stages.ml.watch")

DevMeasure = Callable[[torch.nn.Module], float]
"""The dev measure of a model (higher is better), e.g. nDCG@10 of the dev queries."""


@dataclass
class DevEvaluation:
    """Fields of trainers that can evaluate on the dev split while training."""

    eval_every: int
    """Evaluate on the dev split every this many steps (and at the end), keeping the best model by dev; 0 = off."""
    eval_measure: str
    """The dev measure (a score stage measure: nDCG@10, MRR@10, R@100, R@1000, MAP)."""


def dev_column(measure: str) -> str:
    """The train log's column of the dev measure (the report plots ``dev_*`` columns)."""
    return f"dev_{measure}"


class BestByDev:
    """The best model so far by the dev measure: its step, value and weights (a copy on the host)."""

    def __init__(self, measure: str):
        self.measure = measure
        self.step: int | None = None
        self.value = -math.inf
        self.weights: dict[str, torch.Tensor] = {}

    def offer(self, model: torch.nn.Module, step: int, value: float) -> None:
        """Keep ``model``'s weights when ``value`` beats the best so far (ties keep the earlier step)."""
        if value > self.value:
            self.step, self.value = step, value
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            log.info("dev %s = %.4f at step %d: the best so far", self.measure, value, step)
        else:
            log.info("dev %s = %.4f at step %d (best %.4f at step %d)", self.measure, value, step, self.value, self.step)

    def restore_into(self, model: torch.nn.Module) -> None:
        if self.weights:
            model.load_state_dict(self.weights)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Checkpoint tensors and metadata."""
        return {f"best.{k}": v.contiguous() for k, v in self.weights.items()}, {"step": self.step, "value": self.value}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None) -> None:
        if meta:
            self.step, self.value = meta["step"], meta["value"]
            self.weights = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}

    def summary(self) -> dict[str, Any]:
        return {"measure": self.measure, "best_step": self.step, "best_value": self.value}


class EventLog:
    """TensorBoard scalars of the train log's rows (``<out_dir>/tensorboard``); a no-op without ``tensorboard``."""

    SKIPPED = ("step", "epoch")

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR))

    def add(self, rows: list[dict[str, float]]) -> None:
        if self.writer is None:
            return
        for row in rows:
            for name, value in row.items():
                if name not in self.SKIPPED and not math.isnan(value):
                    self.writer.add_scalar(name, value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
