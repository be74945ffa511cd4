"""Training you can watch: the best model by dev is the one written, TensorBoard event files, and stage logs written
line by line (`stages.core.log_lines`)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from tqdm import tqdm

from stages.core import settings
from stages.core.log_lines import LineStream
from stages.core.errors import ConfigError
from stages.ml.dev_eval import DevQueries
from stages.ml.models import load_encoder
from stages.core.artifacts import MODEL_SUBDIR
from stages.ml.training import TrainConfig, train
from stages.core.artifacts import TRAIN_LOG
from stages.ml.watch import DevEvaluation
from stages.core.artifacts import TENSORBOARD_DIR


@dataclass
class WatchedConfig(DevEvaluation, TrainConfig):
    pass


def watched(**fields) -> WatchedConfig:
    """The star section's training and dev settings (the schema's defaults) with ``fields`` over them."""
    return settings.params(WatchedConfig, "star", "encoder", **{"seed": 42, **fields})


def test_the_written_model_is_the_best_by_dev(tiny_model_dir, tmp_path):
    encoder = load_encoder(tiny_model_dir)
    tokens = encoder.tokenize(["what is a dense retriever", "hard negatives"], 16)
    config = watched(max_steps=6, eval_every=2, learning_rate=1e-2, warmup_fraction=0.0, checkpoint_every=0)
    scripted, seen = iter([0.3, 0.7, 0.5]), {}

    def batch_loss(model, epoch, batch):
        return model(tokens["input_ids"], tokens["attention_mask"]).pow(2).mean(), {}

    def evaluate(model):
        assert not model.training
        value = next(scripted)
        seen[value] = {k: v.clone() for k, v in model.state_dict().items()}
        return value

    summary = train(encoder, config, 6, batch_loss, tmp_path, evaluate=evaluate)
    assert summary["dev"] == {"measure": "nDCG@10", "best_step": 4, "best_value": 0.7}
    log = pd.read_parquet(tmp_path / TRAIN_LOG)
    assert log["dev_nDCG@10"].tolist() == pytest.approx([float("nan"), 0.3, float("nan"), 0.7, float("nan"), 0.5], nan_ok=True)
    written = load_encoder(tmp_path / MODEL_SUBDIR).state_dict()
    assert written.keys() == seen[0.7].keys()
    assert all(torch.equal(written[name], seen[0.7][name]) for name in written)
    assert not all(torch.equal(written[name], seen[0.5][name]) for name in written)  # not the last model


def test_tensorboard_events_beside_the_train_log(tiny_model_dir, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    encoder = load_encoder(tiny_model_dir)
    tokens = encoder.tokenize(["a query"], 16)
    config = watched(max_steps=4, eval_every=2, checkpoint_every=0)

    def batch_loss(model, epoch, batch):
        return model(tokens["input_ids"], tokens["attention_mask"]).pow(2).mean(), {"train_mrr": 0.5}

    train(encoder, config, 4, batch_loss, tmp_path, evaluate=lambda model: 0.25)
    events = event_accumulator.EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    assert {"loss", "lr", "grad_norm", "train_mrr", "dev_nDCG@10"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("dev_nDCG@10")] == [2, 4]
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


def test_dev_evaluation_needs_judged_dev_queries(prepared, tmp_path):
    assert DevQueries.read(prepared, "MRR@10").query_ids  # the fixture carves a dev split from train
    assert DevQueries.read(prepared, "P@5").query_ids  # any ir-measures measure averaged over queries
    with pytest.raises(ConfigError, match="unknown measure 'nosuch@5'"):
        DevQueries.read(prepared, "nosuch@5")


def test_progress_bars_become_periodic_lines_and_noise_is_dropped():
    now = [0.0]
    out = io.StringIO()
    stream = LineStream(out, interval=30.0, clock=lambda: now[0])
    stream.write("Loading weights: 100%|####| 5/5\n")
    for step in range(0, 101, 10):
        now[0] = step  # seconds
        stream.write(f"\rtrain: {step}%   ")
        if step == 50:
            stream.write("2026 INFO stages.ml.watch: dev nDCG@10 = 0.5\n")  # a log line while the bar is drawn
    stream.write("\n")
    stream.write("2026 INFO stages: wrote it\n")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == [
        "train: 0%",
        "train: 30%",
        "2026 INFO stages.ml.watch: dev nDCG@10 = 0.5",
        "train: 60%",
        "train: 90%",
        "train: 100%",
        "2026 INFO stages: wrote it",
    ]


def test_tqdm_through_the_line_stream_writes_no_carriage_returns():
    out = io.StringIO()
    for _ in tqdm(range(50), file=LineStream(out), desc="train", mininterval=0):
        pass
    text = out.getvalue()
    assert "\r" not in text and text.splitlines()[0].startswith("train:") and "50/50" in text.splitlines()[-1]

