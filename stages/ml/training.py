"""The training loop shared by the trainers (STAR, the warm-up, later ADORE): AdamW with linear warm-up and linear
decay, bf16 autocast on CUDA, a per-step log (``train_log.parquet``) with its loss curve (``loss.png``), and
checkpoint/resume.

A trainer supplies ``batch_loss(epoch, batch) -> (loss, extra log values)``; the data of a step must be a function of
(seed, epoch, batch) alone (``epoch_order``, ``batch_rng``), so that a resumed run draws the same batches as an
uninterrupted one. Everything else that changes while training is in the checkpoint: weights, optimiser and scheduler
state, the RNG states (dropout draws from torch's) and the log so far. On CPU a resumed run ends with bitwise the same
weights as an uninterrupted one.

A checkpoint is one safetensors file, ``<work_dir>/checkpoint.safetensors``: tensors as tensors and everything else as
JSON in its metadata, so nothing is pickled. It is written to a temporary file that is renamed into place, so a kill
leaves either the previous checkpoint or the new one.

Several processes (torchrun, see `stages.ml.distributed`): every rank takes its slice of the same global batch, the model
is wrapped in DDP, and ``batch_loss`` returns the rank's share of the global batch's loss (the shares sum to it); the
backward pass runs on share * world_size, so that DDP's averaging leaves every rank with the gradient of the global
loss, exactly as one process on the whole batch. Rank 0 alone logs, shows progress and writes checkpoints and the
artifact; the checkpoint holds every rank's RNG state, and every rank resumes from it.

Watching (`stages.ml.watch`): with a trainer's ``evaluate`` and ``eval_every`` > 0 the model is measured on dev every
``eval_every`` steps and at the end, and the best model by dev (kept in the checkpoint) is the one written; the log's
rows also go to TensorBoard event files in ``<out_dir>/tensorboard`` when ``tensorboard`` is installed.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from . import distributed
from .graphed import FixedShapeStep, GraphedStep, graphs_wanted
from ..core.errors import ArtifactError, ConfigError
from .models import Encoder, load_encoder, save_encoder
from ..core.artifacts import LOSS_PLOT, MODEL_SUBDIR, TRAIN_LOG
from ..core.tables import write_table
from .watch import BestByDev, DevMeasure, EventLog, dev_column

log = logging.getLogger("stages.ml.training")

CHECKPOINT = "checkpoint.safetensors"
# Test hook: exit abruptly (as if killed) right after this step, to exercise resuming.
STOP_AFTER_ENV = "HARDNEG_STOP_AFTER_STEP"
STOPPED_EXIT_CODE = 75
LOG_EVERY = 50
"""On a GPU, the logged values of a step (loss, gradient norm, the trainer's extras) stay on the device and are read
back every this many steps, in one go: reading them each step would make the host wait for the GPU every step,
instead of queueing the next one while it computes. On the CPU they are read every step (nothing runs ahead)."""
CPU_THREADS = 2
"""Intra-op threads of training on the CPU, whatever the machine or --cores: sums split over threads round
differently, so the count changes the weights. A constant of the code, so not in the artifact key."""

BatchLoss = Callable[[torch.nn.Module, int, int], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class TrainConfig:
    """Fields common to every trainer; stage params dataclasses inherit them."""

    learning_rate: float
    """Peak AdamW learning rate (paper's STAR: 1e-4 with LAMB on RoBERTa-base)."""
    batch_size: int
    """Queries per step (paper code's default: 64 per device)."""
    epochs: int
    """Passes over the training queries; ignored when max_steps > 0."""
    max_steps: int
    """Total optimiser steps; 0 = epochs decide."""
    warmup_fraction: float
    """Share of the steps with a linear warm-up from 0; then linear decay to 0."""
    warmup_steps: int
    """Warm-up steps; > 0 overrides warmup_fraction (paper code: 1000 for STAR, 2000 for ADORE)."""
    weight_decay: float
    """AdamW weight decay, not applied to biases and LayerNorm weights (paper code: 0.01)."""
    grad_clip: float
    """Clip the gradient norm to this; 0 = no clipping (paper code: 1.0)."""
    seed: int
    """Seeds model dropout and the data order (non-negative; paper code: 42)."""
    checkpoint_every: int
    """Write a resumable checkpoint into the work folder every this many steps; 0 = never."""
    bf16: bool
    """bfloat16 autocast for the encoder forward passes on CUDA (never on CPU); losses stay float32."""
    gradient_checkpointing: bool
    """Trade compute for activation memory (paper: on, with fp16)."""
    query_max_length: int
    """Query truncation in tokens (paper: 24 on MS MARCO)."""
    doc_max_length: int
    """Document truncation in tokens (paper: 120 for passages, 512 for documents)."""


def pick_device() -> torch.device:
    return distributed.device()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def initial_encoder(params: Any, inputs: Mapping[str, Path], device: torch.device) -> tuple[Encoder, Path | str]:
    """Seed every generator from ``params.seed``, then load the encoder to train (the ``init`` input's model, else
    ``params.model``, with `EncoderSpec`'s pooling and normalize) onto ``device``; returns it and where it came from.
    """
    seed_everything(params.seed)
    init = Path(inputs["init"]) / MODEL_SUBDIR if "init" in inputs else params.model
    log.info("initialising the encoder from %s", init)
    encoder = load_encoder(init, pooling=params.pooling, normalize=params.normalize)
    return encoder.to(device), init


def batch_shape(batch_size: int, count: int) -> tuple[int, int]:
    """(queries per step, steps per epoch) for ``count`` training queries; fails early when a step's queries cannot be
    split across the processes."""
    size = min(batch_size, count)
    distributed.rank_slices(size)
    return size, max(1, count // size)


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``count`` training examples in ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """Randomness for sampling within one batch (positives, negatives): a function of (seed, epoch, batch) only."""
    return np.random.default_rng([seed, epoch, batch, 1])


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    return config.max_steps if config.max_steps > 0 else config.epochs * steps_per_epoch


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            exempt = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
            (no_decay if exempt else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused on CUDA: one kernel for every parameter's update (the same AdamW, rounded differently from the foreach one)
    fused = all(p.is_cuda for group in groups for p in group["params"]) or None
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=fused)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from 0 over ``warmup_steps`` (else ``warmup_fraction`` of the steps), then linear decay to 0
    (as transformers does). Warm-up longer than training (the paper's 2000 steps on a small dataset) never peaks."""
    warmup = config.warmup_steps if config.warmup_steps > 0 else round(config.warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- checkpoints ---------------------------------------------------------------------------------------------------


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and distributed.active():
        tensors["rng.device"] = torch.cuda.get_rng_state(distributed.device())  # this rank's GPU only
    elif torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), position, has_gauss, cached]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    own = f"rank{distributed.rank()}."  # written by several processes: each rank's own torch generators
    tensors = {key[len(own) :]: value for key, value in tensors.items() if key.startswith(own)} or tensors
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.device" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.device"], distributed.device())
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(values) for i, values in meta["scalars"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            index, name = key[len("optimizer.") :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _log_tensors(rows: list[dict[str, float]]) -> dict[str, torch.Tensor]:
    frame = pd.DataFrame(rows)
    return {f"log.{column}": torch.tensor(frame[column].to_numpy(np.float64)) for column in frame.columns}


def _log_rows(tensors: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    columns = {key[4:]: tensors[key].tolist() for key in tensors if key.startswith("log.")}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    for row in rows:
        row["step"], row["epoch"] = int(row["step"]), int(row["epoch"])
    return rows


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    rows: list[dict[str, float]],
    shape: dict[str, int],
    best: BestByDev | None = None,
) -> None:
    """Everything needed to continue after ``step`` completed steps, written atomically (temp file + rename).

    Several processes: every rank calls it (to hand over its RNG state); rank 0 writes."""
    rng_tensors, rng_meta = _rng_state()
    if distributed.active():
        for rank, states in enumerate(distributed.all_gather_objects(rng_tensors)):
            rng_tensors |= {f"rank{rank}.{key}": value for key, value in states.items()}
    if not distributed.is_main():
        return
    # clone: tensors that share storage (tied weights) cannot be saved as they are
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    optimizer_tensors, optimizer_meta = _optimizer_state(optimizer)
    tensors.update(optimizer_tensors | rng_tensors | _log_tensors(rows))
    meta = {"step": step, "shape": shape, "optimizer": optimizer_meta, "rng": rng_meta}
    meta["scheduler"] = scheduler.state_dict()
    if best is not None:
        best_tensors, meta["best"] = best.state()
        tensors.update(best_tensors)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    shape: dict[str, int],
    best: BestByDev | None = None,
) -> tuple[int, list[dict[str, float]]]:
    """Restore a checkpoint in place (``best`` too); returns (completed steps, log rows so far)."""
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["state"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if meta["shape"] != shape:
        raise ArtifactError(
            f"checkpoint was written for a run of shape {meta['shape']}, this run has {shape}",
            path=path,
            fix="delete the checkpoint to train from scratch",
        )
    model.load_state_dict({key[len("model.") :]: value for key, value in tensors.items() if key.startswith("model.")})
    _load_optimizer_state(optimizer, tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    _set_rng_state(tensors, meta["rng"])
    if best is not None:
        best.load_state(tensors, meta.get("best"))
    return meta["step"], _log_rows(tensors)


# --- the loop ------------------------------------------------------------------------------------------------------


def fixed_cpu_threads(function: Callable) -> Callable:
    """Run ``function(model, ...)`` with CPU_THREADS intra-op threads when the model is on the CPU (then restored)."""

    @functools.wraps(function)
    def wrapper(model: torch.nn.Module, *args, **kwargs):
        if next(model.parameters()).device.type != "cpu":
            return function(model, *args, **kwargs)
        before = torch.get_num_threads()
        torch.set_num_threads(CPU_THREADS)
        try:
            return function(model, *args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


@fixed_cpu_threads
def train(
    model: torch.nn.Module,
    config: TrainConfig,
    steps_per_epoch: int,
    batch_loss: BatchLoss,
    out_dir: Path,
    work_dir: Path | None = None,
    queries_per_step: int | None = None,
    evaluate: DevMeasure | None = None,
    fixed_shape: FixedShapeStep | None = None,
) -> dict[str, Any]:
    """Train ``model`` (already on its device) and write model/, train_log.parquet and loss.png into ``out_dir``.

    ``batch_loss(trained, epoch, batch)`` runs the forward pass of one batch through ``trained`` (``model``, or its
    DDP wrapper) and returns the loss and extra values to log; with several processes, this rank's share of the
    loss and the extras of the whole global batch (see the module docstring).
    With ``work_dir`` a checkpoint is written there every ``checkpoint_every`` steps and resumed from when present.
    With ``evaluate`` and ``config.eval_every`` > 0 (`stages.ml.watch.DevEvaluation`), the model is evaluated on dev
    every that many steps and at the end (the log's ``dev_<measure>`` column), and the best model by dev is written.
    With ``fixed_shape`` (the same step with shapes that never change), one process on CUDA captures the step in a
    CUDA graph and replays it (`stages.ml.graphed`); ``batch_loss`` then serves only where capturing fails.
    Returns the summary (steps, seconds, queries per second, final loss, peak GPU memory, whether a CUDA graph ran);
    ``queries_per_step`` (default ``batch_size``) is for the throughput.
    """
    run = TrainingRun.prepare(model, config, steps_per_epoch, work_dir, evaluate)
    trained = distributed.wrap(model)
    events = EventLog(out_dir, enabled=distributed.is_main())
    events.add(run.rows)
    model.train()
    progress = tqdm(range(run.start, run.total), initial=run.start, total=run.total, desc="train", unit="step",
                    disable=not distributed.is_main())
    log_every = LOG_EVERY if run.device.type == "cuda" else 1
    window = PendingRows(progress)
    graphed = None
    one_process = distributed.world_size() == 1 and not config.gradient_checkpointing
    if fixed_shape is not None and run.start < run.total and graphs_wanted(run.device) and one_process:
        graphed = capture(model, run.optimizer, fixed_shape, config, run.autocast)
    for step in progress:
        epoch, batch = divmod(step, steps_per_epoch)
        lr = run.scheduler.get_last_lr()[0]
        if graphed is not None:
            extras = graphed.run(fixed_shape.batch_index(epoch, batch))
            global_loss, grad_norm = extras.pop("loss"), extras.pop("grad_norm")
        else:
            global_loss, grad_norm, extras = run.eager_step(trained, batch_loss, epoch, batch)
        run.scheduler.step()
        window.add({"step": step + 1, "epoch": epoch, "loss": global_loss, "lr": lr, "grad_norm": grad_norm} | extras)
        run.after_step(step + 1, window, events, log_every)
    progress.close()
    events.close()
    return run.finish(out_dir, queries_per_step or config.batch_size) | {"cuda_graph": graphed is not None} \
        | ({"dev": run.best.summary()} if run.best is not None else {})


@dataclass
class TrainingRun:
    """One `train` call's state: the optimiser and schedule, where it resumed, the rows logged so far, the best model
    by dev, and what happens after each step (log, evaluate, checkpoint, the test hook that stops abruptly)."""

    model: torch.nn.Module
    config: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total: int
    shape: dict[str, int]
    checkpoint: Path | None
    start: int
    rows: list[dict[str, float]]
    evaluate: DevMeasure | None
    best: BestByDev | None
    stop_after: int
    """`STOP_AFTER_ENV`: the step after which the process stops abruptly (tests of resuming); 0: never."""

    @classmethod
    def prepare(cls, model, config: TrainConfig, steps_per_epoch: int, work_dir: Path | None, evaluate) -> TrainingRun:
        """Set up the optimiser and schedule, and resume from the work folder's checkpoint when there is one."""
        if distributed.requested() and not distributed.active():
            raise ConfigError(
                "WORLD_SIZE > 1 but no process group: this stage was not started through "
                "stages.ml.distributed.run_stage",
                fix="run it as one process, or have its main() call stages.ml.distributed.run_stage",
            )
        device = next(model.parameters()).device
        total = total_steps(config, steps_per_epoch)
        if config.gradient_checkpointing:
            transformer = getattr(model, "model", model)
            transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, total)
        shape = {"total_steps": total, "steps_per_epoch": steps_per_epoch}
        checkpoint = Path(work_dir) / CHECKPOINT if work_dir is not None else None
        start, rows = 0, []
        eval_every = getattr(config, "eval_every", 0) if evaluate is not None else 0
        best = BestByDev(config.eval_measure) if eval_every > 0 else None
        if distributed.rank() > 0:
            torch.manual_seed(config.seed + distributed.rank())  # dropout draws of its own
        if checkpoint is not None and checkpoint.is_file():
            start, rows = load_checkpoint(checkpoint, model, optimizer, scheduler, shape, best)
            log.info("resuming from step %d (of %d) with %s", start, total, checkpoint)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
        state = (optimizer, scheduler, total, shape, checkpoint, start, rows, evaluate, best, stop_after)
        return cls(model, config, device, *state)

    @property
    def autocast(self) -> bool:
        return self.config.bf16 and self.device.type == "cuda"

    def eager_step(self, trained: torch.nn.Module, batch_loss: BatchLoss, epoch: int, batch: int):
        """Forward, backward, clipping and the optimiser step of one batch: (global loss, gradient norm, extras)."""
        world = distributed.world_size()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, extras = batch_loss(trained, epoch, batch)
        global_loss = distributed.global_sum(loss)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * world if world > 1 else loss).backward()  # DDP averages the ranks' gradients
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
        self.optimizer.step()
        return global_loss, grad_norm, extras

    def after_step(self, done: int, window: PendingRows, events: EventLog, log_every: int) -> None:
        """Read the logged values back when due, evaluate on dev, checkpoint, or stop abruptly (the test hook)."""
        every = self.config.checkpoint_every if self.checkpoint is not None else 0
        stop_after = self.stop_after
        checkpoint_due = every > 0 and done % every == 0 and done < self.total
        eval_every = getattr(self.config, "eval_every", 0)
        eval_due = self.best is not None and (done % eval_every == 0 or done == self.total)
        if done % log_every == 0 or done == self.total or checkpoint_due or eval_due or done == stop_after:
            flushed = window.flush()  # raises on a non-finite loss, before any checkpoint of it
            if eval_due:
                value = evaluate_on_dev(self.model, self.evaluate, self.best, done)
                flushed[-1][dev_column(self.best.measure)] = value
                window.since = time.perf_counter()  # the steps' seconds leave the evaluation out
            self.rows += flushed
            events.add(flushed)
        if checkpoint_due:
            args = (self.model, self.optimizer, self.scheduler, done, self.rows, self.shape, self.best)
            save_checkpoint(self.checkpoint, *args)
        if done == stop_after:
            distributed.barrier()  # let rank 0 finish its checkpoint
            log.warning("%s=%d: stopping abruptly after step %d", STOP_AFTER_ENV, stop_after, done)
            os._exit(STOPPED_EXIT_CODE)

    def finish(self, out_dir: Path, queries_per_step: int) -> dict[str, Any]:
        """Write model/ (the best by dev, if evaluated), the log and its plot; the summary."""
        frame = pd.DataFrame(self.rows)
        if self.best is not None:
            self.best.restore_into(self.model)
        if distributed.is_main():
            save_encoder(self.model, Path(out_dir) / MODEL_SUBDIR, max_seq_length=self.config.doc_max_length)
            write_table(frame, Path(out_dir) / TRAIN_LOG)
            plot_losses(frame, Path(out_dir) / LOSS_PLOT)
        return summarise(frame, queries_per_step, self.device, resumed_from=self.start)


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    fixed_shape: FixedShapeStep,
    config: TrainConfig,
    autocast: bool,
) -> GraphedStep | None:
    """The step captured in a CUDA graph, or None (logged) where capturing fails: training then runs eagerly."""
    began = time.perf_counter()
    try:
        graphed = GraphedStep(model, optimizer, fixed_shape, config.grad_clip, autocast)
    except RuntimeError as error:
        log.warning("could not capture the training step in a CUDA graph (%s); training eagerly", error)
        return None
    log.info("captured the training step in a CUDA graph in %.1f s; each step replays it", time.perf_counter() - began)
    return graphed


def evaluate_on_dev(model: torch.nn.Module, evaluate: DevMeasure, best: BestByDev, step: int) -> float:
    """``evaluate(model)`` in eval mode, offered to ``best``; the model is left in training mode."""
    began = time.perf_counter()
    model.eval()
    try:
        value = float(evaluate(model))
    finally:
        model.train()
    best.offer(model, step, value)
    log.info("dev evaluation at step %d took %.1f s", step, time.perf_counter() - began)
    return value


class PendingRows:
    """Log rows whose values may still be on the device (0-dim tensors, or anything with ``__float__``), turned into
    floats together by `flush`: one wait for the device for the whole window. A row's ``seconds`` is the mean step
    time of its window, from the end of the previous window to the end of this one (steps are queued ahead of the
    device, so one step's own time is not observable without waiting for it)."""

    def __init__(self, progress: tqdm):
        self.progress = progress
        self.rows: list[dict[str, Any]] = []
        self.since = time.perf_counter()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> list[dict[str, float]]:
        tensors = [v for row in self.rows for v in row.values() if isinstance(v, torch.Tensor)]
        values = iter(torch.stack([t.detach().double().reshape(()) for t in tensors]).tolist() if tensors else [])
        rows = [
            {k: v if k in ("step", "epoch") else (next(values) if isinstance(v, torch.Tensor) else float(v))
             for k, v in row.items()}
            for row in self.rows
        ]
        now = time.perf_counter()
        for row in rows:
            row["seconds"] = (now - self.since) / len(rows)
            if not math.isfinite(row["loss"]):
                raise ConfigError(
                    f"the training loss is {row['loss']} at step {row['step']}",
                    fix="lower learning_rate (or turn bf16 off); the last checkpoint is kept in the work folder",
                )
        self.rows, self.since = [], now
        if rows:
            self.progress.set_postfix(loss=f"{rows[-1]['loss']:.4f}", lr=f"{rows[-1]['lr']:.2e}")
        return rows


def summarise(frame: pd.DataFrame, queries_per_step: int, device: torch.device, resumed_from: int) -> dict[str, Any]:
    seconds = float(frame["seconds"].sum()) if len(frame) else 0.0
    tail = frame["loss"].tail(max(1, len(frame) // 10))
    summary = {
        "steps": len(frame),
        "seconds": round(seconds, 3),
        "queries_per_second": round(len(frame) * queries_per_step / seconds, 2) if seconds else None,
        "first_loss": float(frame["loss"].iloc[0]) if len(frame) else None,
        "final_loss": float(tail.mean()) if len(frame) else None,
        "resumed_from_step": resumed_from,
        "device": str(device),
        "processes": distributed.world_size(),
    }
    if device.type == "cuda":
        summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    first, final = summary["first_loss"], summary["final_loss"]
    log.info("trained %d steps in %.1f s; loss %s -> %s", len(frame), seconds, first, final)
    return summary


def plot_losses(frame: pd.DataFrame, path: Path) -> None:
    """The loss (and any other ``*_loss`` column) per step, raw and as a running mean; headless (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    window = max(1, len(frame) // 50)
    for column in ["loss"] + [c for c in frame.columns if c.endswith("_loss")]:
        values = frame[column]
        (line,) = axes.plot(frame["step"], values.rolling(window, min_periods=1).mean(), label=column)
        if window > 1:
            axes.plot(frame["step"], values, color=line.get_color(), alpha=0.25, linewidth=0.8)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(f"training loss (running mean over {window} steps)" if window > 1 else "training loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
