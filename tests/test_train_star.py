"""Stage train_star (and train_warmup) with the tiny random BERT on the prepared slice: modes, loss, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from stages.bm25 import Bm25Params, bm25_run
from stages.bm25_index import Bm25IndexParams, build_index
from stages.errors import ConfigError
from stages.mine_negatives import MineParams, mine
from stages.train_star import (
    StarParams,
    batch_loss,
    load_training_data,
    sample_batch,
    train_star,
)
from stages.training import CHECKPOINT, STOP_AFTER_ENV, STOPPED_EXIT_CODE

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def negatives(prepared, tmp_path_factory) -> Path:
    """A mine_negatives artifact over a BM25 run of the train queries."""
    run, index = tmp_path_factory.mktemp("bm25-train"), tmp_path_factory.mktemp("bm25-index")
    build_index(Bm25IndexParams(), {"prepared": prepared}, index)
    bm25_run(Bm25Params(split="train", top_k=50), {"prepared": prepared, "index": index}, run)
    out = tmp_path_factory.mktemp("negatives")
    mine(MineParams(depth=20), {"prepared": prepared, "run": run}, out)
    return out


def tiny_params(model: Path, **changes) -> StarParams:
    base = StarParams(
        model=str(model),
        batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        warmup_fraction=0.0,
        query_max_length=16,
        doc_max_length=32,
        checkpoint_every=0,
        seed=7,
    )
    return dataclasses.replace(base, **changes)


def model_tensors(artifact: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted((artifact / "model").rglob("*.safetensors")):
        tensors |= {f"{path.name}:{k}": v for k, v in load_file(path).items()}
    assert tensors, f"no safetensors weights under {artifact / 'model'}"
    return tensors


def test_batches_are_deterministic_and_well_formed(prepared, negatives, tiny_model_dir):
    params = tiny_params(tiny_model_dir, hard_negatives_per_query=2)
    data = load_training_data(params, {"prepared": prepared, "negatives": negatives})
    batch = sample_batch(data, params, epoch=1, batch=2)
    assert batch == sample_batch(data, params, epoch=1, batch=2) != sample_batch(data, params, epoch=1, batch=3)
    assert len(batch.queries) == 4 and len(batch.doc_ids) == 4 * 3
    for i, q in enumerate(batch.queries):
        assert batch.doc_ids[i] in data.positives[q]
        own_negatives = batch.doc_ids[4 + 2 * i : 4 + 2 * i + 2]
        assert set(own_negatives) <= set(data.mined[q]) and not set(own_negatives) & data.judged[q]
    randneg = dataclasses.replace(params, negatives="randneg")
    drawn = sample_batch(load_training_data(randneg, {"prepared": prepared}), randneg, 0, 0)
    assert len(drawn.doc_ids) == 12 and all(d in data.doc_text for d in drawn.doc_ids)


@pytest.mark.parametrize("mode", ["star", "static", "inbatch", "randneg"])
def test_each_mode_trains_and_writes_the_artifact(mode, prepared, negatives, tiny_model_dir, tmp_path):
    inputs = {"prepared": prepared} | ({"negatives": negatives} if mode in ("star", "static") else {})
    summary = train_star(tiny_params(tiny_model_dir, negatives=mode), inputs, tmp_path)
    log = pd.read_parquet(tmp_path / "train_log.parquet")
    assert list(log["step"]) == [1, 2, 3] and np.isfinite(log["loss"]).all()
    assert ("hard_loss" in log) == (mode != "inbatch") and ("random_loss" in log) == (mode != "static")
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "model").is_dir()
    assert summary["steps"] == 3 and summary["mode"] == mode and summary["queries_per_second"] > 0


def test_training_lowers_the_loss_of_a_fixed_batch(prepared, negatives, tiny_model_dir, tmp_path):
    from stages.models import load_encoder

    params = tiny_params(tiny_model_dir, batch_size=8, max_steps=12, learning_rate=2e-3)
    inputs = {"prepared": prepared, "negatives": negatives}
    data = load_training_data(params, inputs)
    batch = sample_batch(data, params, epoch=0, batch=0)

    def fixed_batch_loss(model_dir) -> float:
        encoder = load_encoder(model_dir, pooling=params.pooling, normalize=params.normalize).eval()
        with torch.no_grad():
            return float(batch_loss(encoder, data, params, batch, torch.device("cpu"))[0])

    before = fixed_batch_loss(tiny_model_dir)
    train_star(params, inputs, tmp_path)
    assert fixed_batch_loss(tmp_path / "model") < 0.5 * before  # about 3.9 -> 0.9


def test_warmup_stage_is_the_star_trainer(prepared, negatives, tiny_model_dir, tmp_path):
    from stages.train_warmup import WarmupParams, main

    assert [f.name for f in dataclasses.fields(WarmupParams)] == [f.name for f in dataclasses.fields(StarParams)]
    out = tmp_path / "results" / "train_warmup" / "test"
    params = dataclasses.asdict(tiny_params(tiny_model_dir, max_steps=2))
    inputs = {"prepared": str(prepared), "negatives": str(negatives)}
    assert main([str(out), "--params", json.dumps(params), "--inputs", json.dumps(inputs), "--no-check-key"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert json.loads((out / "manifest.json").read_text())["stage"] == "train_warmup"
    # STAR starts from the warm-up model (the `init` input) rather than from `model`
    star = tmp_path / "star"
    star.mkdir()
    summary = train_star(tiny_params("no-such-model", max_steps=1), {**inputs, "init": out}, star)
    assert summary["init"] == str(out / "model") and summary["steps"] == 1


def test_modes_that_need_mined_negatives_require_them(prepared, tiny_model_dir, tmp_path):
    for mode in ("star", "static"):
        with pytest.raises(ConfigError, match="needs a 'negatives' input"):
            train_star(tiny_params(tiny_model_dir, negatives=mode), {"prepared": prepared}, tmp_path)
    with pytest.raises(ConfigError, match="unknown negatives mode"):
        train_star(tiny_params(tiny_model_dir, negatives="ance"), {"prepared": prepared}, tmp_path)


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(prepared, negatives, tiny_model_dir, tmp_path):
    params = tiny_params(tiny_model_dir, max_steps=6, checkpoint_every=2, warmup_fraction=0.3)
    inputs = {"prepared": prepared, "negatives": negatives}
    straight = tmp_path / "straight"
    straight.mkdir()
    train_star(params, inputs, straight)

    out = tmp_path / "results" / "train_star" / "resumed"
    work = tmp_path / "results" / "work" / "train_star" / "resumed"
    command = [sys.executable, "-m", "stages.train_star", str(out), "--no-check-key"]
    command += ["--params", json.dumps(dataclasses.asdict(params))]
    command += ["--inputs", json.dumps({k: str(v) for k, v in inputs.items()})]
    env = {k: v for k, v in os.environ.items() if k != STOP_AFTER_ENV}
    killed = subprocess.run(command, cwd=ROOT, env=env | {STOP_AFTER_ENV: "3"}, capture_output=True, text=True)
    assert killed.returncode == STOPPED_EXIT_CODE, killed.stderr[-3000:]
    assert (work / CHECKPOINT).is_file() and not out.exists()

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stderr
    assert not work.exists()  # the work folder goes once the artifact is written
    expected, actual = model_tensors(straight), model_tensors(out)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    log = pd.read_parquet(out / "train_log.parquet")
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]
    straight_losses = pd.read_parquet(straight / "train_log.parquet")["loss"].tolist()
    assert log["loss"].tolist() == pytest.approx(straight_losses, abs=1e-6)
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 2
