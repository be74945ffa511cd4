"""The shared training loop's parts: schedule, optimiser groups, data order, checkpoint round trip, loss plot."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from stages.core import settings
from stages.ml.training import (
    CHECKPOINT,
    TrainConfig,
    batch_rng,
    epoch_order,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    plot_losses,
    save_checkpoint,
)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(4, 4)
        self.LayerNorm = torch.nn.LayerNorm(4)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.LayerNorm(self.dense(x)))


def train_config(**fields) -> TrainConfig:
    """The star section's training settings (the schema's defaults) with ``fields`` over them."""
    return settings.params(TrainConfig, "star", "encoder", **{"seed": 42, **fields})


def step(model, optimizer, scheduler):
    loss = model(torch.randn(8, 4)).pow(2).mean() + random.random() + float(np.random.rand())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_schedule_warms_up_then_decays_to_zero():
    optimizer = make_optimizer(Toy(), train_config(learning_rate=1.0))
    scheduler = make_scheduler(optimizer, train_config(warmup_fraction=0.2), total=10)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


def test_no_weight_decay_on_biases_and_layer_norms():
    groups = make_optimizer(Toy(), train_config(weight_decay=0.1)).param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert len(groups[0]["params"]) == 1 and len(groups[1]["params"]) == 3  # dense.weight | dense.bias, LayerNorm.*


def test_data_order_depends_on_seed_and_epoch_only():
    assert (epoch_order(50, 3, 1) == epoch_order(50, 3, 1)).all()
    assert sorted(epoch_order(50, 3, 1)) == list(range(50))
    assert (epoch_order(50, 3, 1) != epoch_order(50, 3, 2)).any()
    assert (epoch_order(50, 4, 1) != epoch_order(50, 3, 1)).any()
    draw = [batch_rng(3, 1, batch).integers(1 << 30) for batch in (7, 7, 8)]
    assert draw[0] == draw[1] != draw[2]


def test_checkpoint_round_trip_continues_exactly(tmp_path):
    config = train_config(learning_rate=0.01)
    torch.manual_seed(0)
    model = Toy()
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, 8)
    model.train()
    for _ in range(3):
        step(model, optimizer, scheduler)
    rows = [{"step": s, "epoch": 0, "loss": 0.5 / s, "lr": 0.01, "seconds": 0.1} for s in (1, 2, 3)]
    shape = {"total_steps": 8, "steps_per_epoch": 4}
    save_checkpoint(tmp_path / CHECKPOINT, model, optimizer, scheduler, 3, rows, shape)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary file left behind
    for _ in range(5):
        step(model, optimizer, scheduler)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(123)  # a fresh process: other weights, other RNG states
    random.seed(5)
    np.random.seed(5)
    resumed = Toy()
    optimizer = make_optimizer(resumed, config)
    scheduler = make_scheduler(optimizer, config, 8)
    done, restored_rows = load_checkpoint(tmp_path / CHECKPOINT, resumed, optimizer, scheduler, shape)
    assert done == 3 and restored_rows == rows
    assert scheduler.last_epoch == 3
    resumed.train()
    for _ in range(5):
        step(resumed, optimizer, scheduler)
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_checkpoint_of_another_run_shape_is_refused(tmp_path):
    from stages.core.errors import ArtifactError

    model = Toy()
    optimizer = make_optimizer(model, train_config())
    scheduler = make_scheduler(optimizer, train_config(), 4)
    rows = [{"step": 1, "epoch": 0, "loss": 1.0, "lr": 0.0, "seconds": 0.1}]
    shape = {"total_steps": 4, "steps_per_epoch": 2}
    save_checkpoint(tmp_path / CHECKPOINT, model, optimizer, scheduler, 1, rows, shape)
    with pytest.raises(ArtifactError, match="shape"):
        load_checkpoint(tmp_path / CHECKPOINT, model, optimizer, scheduler, {"total_steps": 8, "steps_per_epoch": 2})


def test_loss_plot_is_a_png(tmp_path):
    frame = pd.DataFrame({"step": range(1, 121), "loss": np.linspace(2, 0.5, 120), "hard_loss": np.linspace(3, 1, 120)})
    plot_losses(frame, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_warmup_steps_override_the_fraction():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = make_scheduler(optimizer, train_config(warmup_fraction=0.5, warmup_steps=20), total=10)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([step / 20 for step in range(10)])  # longer than training: never peaks
