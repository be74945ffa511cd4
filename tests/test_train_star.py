"""Stage train_star (and train_warmup) with the tiny random BERT on the prepared slice: modes, loss, resume."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from helpers import assert_same_weights, killed_then_resumed, tiny_training

from stages.ml import star_training as train_star_module
from stages.bm25 import Bm25Params, bm25_run
from stages.bm25_index import Bm25IndexParams, build_index
from stages.core import parquet_io, settings
from stages.core.artifacts import NEGATIVES
from stages.core.errors import ConfigError, DataError
from stages.core.tables import NEGATIVES_SCHEMA
from stages.mine_negatives import MineParams, mine
from stages.ml.star_training import StarParams, StepInputs, batch_loss, inputs_loss, load_training_data, prepare_inputs, sample_batch, train_star
from stages.ml.training import CHECKPOINT


@pytest.fixture(scope="module")
def negatives(prepared, tmp_path_factory) -> Path:
    """A mine_negatives artifact over a BM25 run of the train queries."""
    run, index = tmp_path_factory.mktemp("bm25-train"), tmp_path_factory.mktemp("bm25-index")
    build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, index)
    bm25_run(settings.params(Bm25Params, "bm25", split="train", top_k=50), {"prepared": prepared, "index": index}, run)
    out = tmp_path_factory.mktemp("negatives")
    mine(settings.params(MineParams, "mine", split="train", depth=20), {"prepared": prepared, "run": run}, out)
    return out


def tiny_params(model: Path, **changes) -> StarParams:
    return tiny_training(StarParams, "star", model, **{"doc_max_length": 32, "seed": 7, **changes})


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


@pytest.mark.parametrize("mode", ["star", "randneg"])
def test_documents_read_from_the_tokenize_artifact_train_the_same_weights(
    mode, prepared, negatives, tiny_model_dir, tmp_path
):
    """The corpus's `tokenize` artifact instead of tokenizing documents in the trainer: bitwise the same model; one
    made at another length is refused."""
    from stages import tokenize
    from stages.core.errors import ArtifactError

    tokens, made = tmp_path / "tokens", {"model": str(tiny_model_dir), "max_length": 32}
    argv = ["--no-check-key", "--params", json.dumps(made), "--inputs", json.dumps({"prepared": str(prepared)})]
    assert tokenize.main([str(tokens), *argv]) == 0
    params = tiny_params(tiny_model_dir, negatives=mode)
    inputs = {"prepared": prepared, "negatives": negatives}
    train_star(params, inputs, tmp_path / "texts")
    train_star(params, inputs | {"tokens": tokens}, tmp_path / "ids")
    assert_same_weights(tmp_path / "texts", tmp_path / "ids")
    with pytest.raises(ArtifactError, match="does not fit this encoder"):
        train_star(dataclasses.replace(params, doc_max_length=48), inputs | {"tokens": tokens}, tmp_path / "wrong")


def test_training_lowers_the_loss_of_a_fixed_batch(prepared, negatives, tiny_model_dir, tmp_path):
    from stages.ml.models import load_encoder

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


@pytest.mark.parametrize("changes", [{}, {"loss": "softmax", "hard_negatives_per_query": 2}, {"negatives": "inbatch"}])
def test_host_and_device_parts_make_batch_loss(changes, prepared, negatives, tiny_model_dir):
    """prepare_inputs then inputs_loss is batch_loss, bit for bit; the logged terms stay 0-dim tensors."""
    from stages.ml.models import load_encoder

    params = tiny_params(tiny_model_dir, **changes)
    data = load_training_data(params, {"prepared": prepared, "negatives": negatives})
    batch = sample_batch(data, params, epoch=0, batch=1)
    cpu = torch.device("cpu")
    results = []
    for split in (False, True):
        torch.manual_seed(3)  # the same dropout draws
        encoder = load_encoder(tiny_model_dir)
        if split:
            inputs = prepare_inputs(encoder.tokenize, data, params, batch)
            assert isinstance(inputs, StepInputs) and inputs.query_input_ids.device.type == "cpu"
            assert inputs.hard_mask.shape == (4, len(batch.doc_ids)) and inputs.rows == slice(0, 4)
            loss, extras = inputs_loss(encoder, inputs, params, cpu)
        else:
            loss, extras = batch_loss(encoder, data, params, batch, cpu)
        loss.backward()
        grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
        assert extras and all(isinstance(v, torch.Tensor) and v.shape == () for v in extras.values())
        results.append((loss.detach(), {k: float(v) for k, v in extras.items()}, grads))
    (loss_a, extras_a, grads_a), (loss_b, extras_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and extras_a == extras_b
    assert len(grads_a) == len(grads_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


# --- prefetching the host side --------------------------------------------------------------------------------------


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("train_star-prefetch")]


def test_training_prefetches_steps_and_resumes_to_the_same_weights(
    prepared, negatives, tiny_model_dir, tmp_path, monkeypatch
):
    """The host side of every step runs on the prefetch thread, in step order; a run that fails mid-way leaves no
    thread behind, and resumed in-process (the prefetching starting mid-way) ends with the straight run's weights."""
    params = tiny_params(tiny_model_dir, max_steps=6, checkpoint_every=2)
    inputs = {"prepared": prepared, "negatives": negatives}
    sampled: list[tuple[int, int, bool]] = []
    original_sample, original_loss = train_star_module.sample_batch, train_star_module.inputs_loss

    def recording_sample(data, params, epoch, batch):
        sampled.append((epoch, batch, threading.current_thread().name.startswith("train_star-prefetch")))
        return original_sample(data, params, epoch, batch)

    monkeypatch.setattr(train_star_module, "sample_batch", recording_sample)
    straight = tmp_path / "straight"
    straight.mkdir()
    train_star(params, inputs, straight)
    assert sampled == [(0, b, True) for b in range(6)]
    assert not prefetch_threads()

    calls = []

    def failing_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("device lost")
        return original_loss(*args, **kwargs)

    sampled.clear()
    out, work = tmp_path / "resumed", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    monkeypatch.setattr(train_star_module, "inputs_loss", failing_loss)
    with pytest.raises(RuntimeError, match="device lost"):
        train_star(params, inputs, out, work)
    assert not prefetch_threads() and (work / CHECKPOINT).is_file()
    monkeypatch.setattr(train_star_module, "inputs_loss", original_loss)
    sampled.clear()
    summary = train_star(params, inputs, out, work)
    assert summary["resumed_from_step"] == 2
    assert sampled == [(0, b, True) for b in range(2, 6)]
    assert_same_weights(straight, out)


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


def test_negatives_that_hold_no_query_stop_with_what_to_change(prepared, tiny_model_dir, tmp_path):
    """Given negatives (a Tevatron dataset's) that are all empty: a DataError with the fix, not a bare failure."""
    queries = pd.read_parquet(prepared / "queries.parquet")
    train = queries[queries["split"] == "train"]["query_id"].tolist()
    empty = pa.Table.from_pydict({"query_id": train, "doc_ids": [[] for _ in train]}, schema=NEGATIVES_SCHEMA)
    parquet_io.write_table(empty, tmp_path / NEGATIVES)
    with pytest.raises(DataError, match="no train query has a judged positive and negatives") as caught:
        load_training_data(tiny_params(tiny_model_dir), {"prepared": prepared, "negatives": tmp_path})
    assert "negative passages" in caught.value.fix


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(prepared, negatives, tiny_model_dir, tmp_path):
    params = tiny_params(tiny_model_dir, max_steps=6, checkpoint_every=2, warmup_fraction=0.3)
    inputs = {"prepared": prepared, "negatives": negatives}
    straight = tmp_path / "straight"
    straight.mkdir()
    train_star(params, inputs, straight)

    out, work = killed_then_resumed("train_star", params, inputs, tmp_path / "results")
    assert not work.exists()  # the work folder goes once the artifact is written
    assert_same_weights(straight, out)
    log = pd.read_parquet(out / "train_log.parquet")
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]
    straight_losses = pd.read_parquet(straight / "train_log.parquet")["loss"].tolist()
    assert log["loss"].tolist() == pytest.approx(straight_losses, abs=1e-6)
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 2


def test_dev_evaluation_re_encodes_the_corpus_and_keeps_the_best(prepared, negatives, tiny_model_dir, tmp_path):
    params = tiny_params(tiny_model_dir, max_steps=4, eval_every=2, eval_measure="MRR@10")
    summary = train_star(params, {"prepared": prepared, "negatives": negatives}, tmp_path)
    dev = pd.read_parquet(tmp_path / "train_log.parquet").set_index("step")["dev_MRR@10"].dropna()
    assert dev.index.tolist() == [2, 4] and dev.between(0, 1).all()
    assert summary["dev"] == {"measure": "MRR@10", "best_step": dev.idxmax(), "best_value": pytest.approx(dev.max())}
    # with the corpus's tokenize artifact its ids are encoded instead of the texts: the same dev values
    from stages import tokenize

    tokens, made = tmp_path / "tokens", {"model": str(tiny_model_dir), "max_length": 32}
    argv = ["--no-check-key", "--params", json.dumps(made), "--inputs", json.dumps({"prepared": str(prepared)})]
    assert tokenize.main([str(tokens), *argv]) == 0
    train_star(params, {"prepared": prepared, "negatives": negatives, "tokens": tokens}, tmp_path / "ids")
    from_ids = pd.read_parquet(tmp_path / "ids" / "train_log.parquet").set_index("step")["dev_MRR@10"].dropna()
    assert from_ids.tolist() == pytest.approx(dev.tolist(), abs=1e-6)


@pytest.mark.parametrize("changes", [{}, {"loss": "softmax", "hard_negatives_per_query": 2}])
def test_packed_inputs_give_the_padded_loss(changes, prepared, negatives, tiny_model_dir):
    """The packed host side (ids without padding, lengths on the host) through Encoder.forward_packed gives the padded
    batch's loss and gradients (eval mode: no dropout draws to differ; on the CPU the attention pads the heads)."""
    from stages.ml.models import load_encoder

    params = tiny_params(tiny_model_dir, **changes)
    data = load_training_data(params, {"prepared": prepared, "negatives": negatives})
    batch = sample_batch(data, params, epoch=0, batch=1)
    encoder = load_encoder(tiny_model_dir).eval()
    results = []
    for packed in (False, True):
        inputs = prepare_inputs(encoder.tokenize, data, params, batch, packed=packed)
        if packed:
            assert inputs.query_attention_mask is None and inputs.query_input_ids.dim() == 1
            assert inputs.doc_lengths.sum() == len(inputs.doc_input_ids)
        encoder.zero_grad(set_to_none=True)
        loss, extras = inputs_loss(encoder, inputs, params, torch.device("cpu"))
        loss.backward()
        grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
        results.append((float(loss.detach()), {k: float(v) for k, v in extras.items()}, grads))
    (loss_a, extras_a, grads_a), (loss_b, extras_b, grads_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert extras_b == pytest.approx(extras_a, rel=1e-5)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b):  # float sums in another order: compared as whole tensors
        assert float((b - a).norm()) <= 1e-4 * float(a.norm()) + 1e-7
