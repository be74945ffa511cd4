"""Two processes (torchrun, gloo on CPU) train as one process on the same global batch: the loss and gradients of one
STAR step and one ADORE step, and the weights of a `train_star` run through torchrun, stopped and resumed.

Run as a script under torchrun, this file is also the worker of the one-step comparison (see `one_step_worker`).
The tiny BERT is used without dropout, whose draws cannot match between one process and two.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import encode_params
from safetensors.torch import load_file, save_file

from stages.core import settings
from stages.ml import distributed
from stages.train_adore import AdoreParams, batch_queries
from stages.ml.frozen_documents import frozen_documents
from stages.train_adore import batch_loss as adore_batch_loss
from stages.train_adore import load_training_data as adore_training_data
from stages.ml.star_training import Batch, StarParams, gathered_columns, rank_part, sample_batch, train_star
from stages.ml.star_training import batch_loss as star_batch_loss
from stages.ml.star_training import load_training_data as star_training_data
from stages.ml.training import CHECKPOINT, STOP_AFTER_ENV, STOPPED_EXIT_CODE
from stages.core.artifacts import TRAIN_LOG
from test_train_star import tiny_params

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
STAR_CASES = {"pairwise": {}, "softmax_weighted": {"loss": "softmax", "random_weight": 0.5}}


def torchrun(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 <args>`` (standalone: a free port of its own)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    base = {k: v for k, v in os.environ.items() if k != STOP_AFTER_ENV} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=base | (env or {}), capture_output=True, text=True, timeout=300)


def star_params(model: Path | str, **changes) -> StarParams:
    # batch 5: uneven across two ranks (3 + 2 queries)
    return tiny_params(Path(model), **{"batch_size": 5, "hard_negatives_per_query": 2, "max_steps": 4, **changes})


# --- one step, as a function that one process or each of two runs --------------------------------------------------


def finish_step(trained: torch.nn.Module, loss: torch.Tensor, extras: dict) -> dict[str, torch.Tensor]:
    """Backward as the training loop does (through ``trained``, the DDP wrapper that must still exist); the global
    loss, the extras and every parameter's gradient."""
    (loss * distributed.world_size()).backward()
    encoder = distributed.unwrap(trained)
    values = {"loss": distributed.global_sum(loss).reshape(1)}
    values |= {k: torch.tensor([float(v)]) for k, v in extras.items() if not k.endswith("_seconds")}  # lazy: float()
    for name, parameter in encoder.named_parameters():
        grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        values[f"grad.{name}"] = grad.contiguous()
    return values


def crossed_batch(batch: Batch, per_query: int) -> Batch:
    """The batch with a query of each rank given, as a negative, a positive of a query on the other rank."""
    docs, count = list(batch.doc_ids), len(batch.queries)
    docs[count + 4 * per_query], docs[count + 1 * per_query] = docs[0], docs[4]
    return Batch(queries=batch.queries, doc_ids=docs)


def star_step(model: str, prepared: str, negatives: str, case: str) -> dict[str, torch.Tensor]:
    from stages.ml.models import load_encoder

    params = star_params(model, **STAR_CASES[case])
    data = star_training_data(params, {"prepared": Path(prepared), "negatives": Path(negatives)})
    batch = crossed_batch(sample_batch(data, params, 0, 0), params.hard_negatives_per_query)
    trained = distributed.wrap(load_encoder(model))
    # with NCCL on two H100s, broadcasting BERT's id buffers at each forward broke the backward of STAR's two
    # forwards a step (gloo on CPU does not show it): the wrapper must not broadcast buffers
    assert not distributed.active() or trained.broadcast_buffers is False
    loss, extras = star_batch_loss(trained, data, params, batch, CPU)
    return finish_step(trained, loss, extras)


def adore_step(model: str, prepared: str, index: str) -> dict[str, torch.Tensor]:
    from stages.ml.models import load_encoder

    shape = {"batch_size": 5, "query_max_length": 16, "top_k": 20, "metric_cutoff": 10}
    params = settings.params(AdoreParams, "adore", "encoder", model=model, seed=5, **shape)
    documents, doc_ids = frozen_documents(params.pq_scoring, {"index": Path(index)}, CPU)
    data = adore_training_data(Path(prepared), doc_ids)
    queries = batch_queries(len(data.query_texts), params, 0, 0)
    trained = distributed.wrap(load_encoder(model))
    loss, extras = adore_batch_loss(trained, data, params, queries, documents, CPU)
    return finish_step(trained, loss, extras)


def one_step_worker(spec: dict[str, str]) -> None:
    """Under torchrun: every STAR case and ADORE, one step each; each rank saves its values to <out>/<case>-<rank>."""
    distributed.init_from_env()
    assert distributed.world_size() == 2
    out = Path(spec["out"])
    for case in STAR_CASES:
        values = star_step(spec["model"], spec["prepared"], spec["negatives"], case)
        save_file(values, str(out / f"star-{case}-{distributed.rank()}.safetensors"))
    values = adore_step(spec["model"], spec["prepared"], spec["index"])
    save_file(values, str(out / f"adore-{distributed.rank()}.safetensors"))
    distributed.shutdown()


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT without dropout."""
    out = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def negatives(prepared, tmp_path_factory) -> Path:
    from stages.bm25 import Bm25Params, bm25_run
    from stages.bm25_index import Bm25IndexParams, build_index
    from stages.mine_negatives import MineParams, mine

    run, out = tmp_path_factory.mktemp("dist-bm25"), tmp_path_factory.mktemp("dist-negatives")
    index = tmp_path_factory.mktemp("dist-bm25-index")
    build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, index)
    bm25_run(settings.params(Bm25Params, "bm25", split="train", top_k=50), {"prepared": prepared, "index": index}, run)
    mine(settings.params(MineParams, "mine", split="train", depth=20), {"prepared": prepared, "run": run}, out)
    return out


@pytest.fixture(scope="module")
def flat_index(prepared, model, tmp_path_factory) -> Path:
    from stages.encode import encode
    from stages.index import IndexParams, build_index

    encoded, out = tmp_path_factory.mktemp("dist-encode"), tmp_path_factory.mktemp("dist-index")
    encode(encode_params(model=str(model), max_length=64, dtype="float32"), {"prepared": prepared}, encoded)
    build_index(settings.params(IndexParams, "index"), {"shard_0": encoded}, out)
    return out


@pytest.fixture(scope="module")
def two_process_steps(prepared, model, negatives, flat_index, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist-steps")
    spec = {"out": out, "model": model, "prepared": prepared, "negatives": negatives, "index": flat_index}
    result = torchrun([__file__, json.dumps({k: str(v) for k, v in spec.items()})])
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def assert_same_values(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    grads = [name for name in expected if name.startswith("grad.")]
    assert len(grads) > 10 and sum(float(expected[name].abs().sum()) for name in grads) > 0
    for name in expected:
        assert_close(actual[name], expected[name], name)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Within rtol 1e-4 and atol 1e-4 times the tensor's largest entry (at least 1): two processes add up the same
    float32 terms in another order (smaller matmuls, other padding), which moves the gradients of this tiny random
    BERT by up to ~3e-5 of their largest entry (in float64 the two agree to ~1e-13)."""
    atol = 1e-4 * max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol, msg=lambda message: f"{name}: {message}")


# --- tests ---------------------------------------------------------------------------------------------------------


def test_gathered_columns_restore_the_batch_layout():
    per_query, parts = 2, [slice(0, 3), slice(3, 5)]
    batch = Batch(queries=list(range(5)), doc_ids=[f"p{i}" for i in range(5)])
    batch.doc_ids += [f"n{i}.{j}" for i in range(5) for j in range(per_query)]
    assert rank_part(batch, parts[1], per_query) == Batch([3, 4], ["p3", "p4", "n3.0", "n3.1", "n4.0", "n4.1"])
    gathered = [doc for part in parts for doc in rank_part(batch, part, per_query).doc_ids]
    assert [gathered[c] for c in gathered_columns(parts, per_query)] == batch.doc_ids
    assert gathered_columns([slice(0, 5)], per_query).tolist() == list(range(15))  # one process: as it is


@pytest.mark.parametrize("case", list(STAR_CASES))
def test_star_step_on_two_processes_equals_one(case, two_process_steps, prepared, model, negatives):
    expected = star_step(str(model), str(prepared), str(negatives), case)
    assert {"hard_loss", "random_loss"} <= expected.keys()
    for rank in (0, 1):
        assert_same_values(expected, load_file(two_process_steps / f"star-{case}-{rank}.safetensors"))


def test_adore_step_on_two_processes_equals_one(two_process_steps, prepared, model, flat_index):
    expected = adore_step(str(model), str(prepared), str(flat_index))
    assert {"train_mrr", "train_recall"} <= expected.keys()
    for rank in (0, 1):
        assert_same_values(expected, load_file(two_process_steps / f"adore-{rank}.safetensors"))


def test_train_star_on_two_processes_stops_resumes_and_ends_as_one(prepared, model, negatives, tmp_path):
    params = star_params(model, checkpoint_every=2)
    inputs = {"prepared": prepared, "negatives": negatives}
    single = tmp_path / "single"
    single.mkdir()
    single_summary = train_star(params, inputs, single)

    out = tmp_path / "results" / "train_star" / "two"
    work = tmp_path / "results" / "work" / "train_star" / "two"
    args = ["-m", "stages.train_star", str(out), "--no-check-key", "--params", json.dumps(dataclasses.asdict(params))]
    args += ["--inputs", json.dumps({k: str(v) for k, v in inputs.items()})]
    killed = torchrun(args, env={STOP_AFTER_ENV: "2"})
    assert killed.returncode != 0 and f"exitcode  : {STOPPED_EXIT_CODE}" in killed.stderr, killed.stderr[-4000:]
    assert not out.exists()
    left_by_the_kill = {p.name for p in out.parent.iterdir()}  # its temporary artifact folder
    assert {"rank0.rng.torch", "rank1.rng.torch"} <= load_file(work / CHECKPOINT).keys()  # each rank's generators

    resumed = torchrun(args)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed.stderr.count("resuming from step 2") == 1  # rank 0 alone logs
    assert resumed.stderr.count(f"wrote {out}") == 1
    assert {p.name for p in out.parent.iterdir()} - left_by_the_kill == {"two"} and not work.exists()
    written = [p.name for p in single.iterdir()] + ["manifest.json", "summary.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(written)

    expected, actual = load_file(single / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:  # about 2e-6 apart after 4 steps
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == single_summary["steps"] == 4 and summary["resumed_from_step"] == 2
    two_log, one_log = (pd.read_parquet(d / TRAIN_LOG) for d in (out, single))
    assert two_log["step"].tolist() == [1, 2, 3, 4]
    for column in ("loss", "hard_loss", "random_loss", "grad_norm"):
        assert two_log[column].tolist() == pytest.approx(one_log[column].tolist(), rel=1e-4), column


def test_world_size_without_a_process_group_is_refused(prepared, model, negatives, tmp_path, monkeypatch):
    from stages.core.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="no process group"):
        train_star(star_params(model, max_steps=1), {"prepared": prepared, "negatives": negatives}, tmp_path)


if __name__ == "__main__":
    one_step_worker(json.loads(sys.argv[1]))
