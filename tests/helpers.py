"""Helpers shared by the tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from stages.core import settings
from stages.core.artifacts import EMBEDDINGS
from stages.encode import EncodeParams
from stages.index import IndexParams, build_index
from stages.core.artifacts import DOC_IDS_FILE, KIND_FILE, SUMMARY
from stages.prepare import PrepareParams
from stages.core.tables import write_embeddings
from stages.ml.training import CHECKPOINT, STOP_AFTER_ENV, STOPPED_EXIT_CODE

ROOT = Path(__file__).resolve().parent.parent
DATASET_SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())["properties"]["dataset"]


def prepare_params(**overrides: Any) -> PrepareParams:
    """PrepareParams of the schema's ``dataset`` defaults (what a run's config starts from), ``overrides`` over them."""
    defaults = {f.name: DATASET_SCHEMA["properties"][f.name]["default"] for f in dataclasses.fields(PrepareParams)}
    return PrepareParams(**{**copy.deepcopy(defaults), **overrides})


# a few quick steps of the tiny model: small batches, no warm-up, no checkpoints
TINY_TRAINING = dict(
    batch_size=4, max_steps=3, learning_rate=1e-3, warmup_fraction=0.0, query_max_length=16, checkpoint_every=0
)


def tiny_training(params_cls: type, section: str, model: Path | str, **fields: Any):
    """``params_cls`` for the tiny model with `TINY_TRAINING`, else the schema's defaults of the config ``section``
    and the encoder; ``fields`` add to it or override it."""
    return settings.params(params_cls, section, "encoder", model=str(model), **{**TINY_TRAINING, **fields})


def encode_params(**fields: Any) -> EncodeParams:
    """`EncodeParams` for every row in one shard (the config's ``num_shards`` is how many jobs), the test split's when
    queries, documents cut at the encoder's ``doc_max_length``; else the schema's defaults. ``fields`` override them."""
    whole = {"what": "corpus", "split": "test", "shard": 0, "num_shards": 1}
    whole["max_length"] = settings.defaults("encoder")["doc_max_length"]
    return settings.params(EncodeParams, "encode", "encoder", **{**whole, **fields})


def tensors_under(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files under ``folder``, named ``<file name>:<tensor name>``."""
    tensors = {}
    for path in sorted(Path(folder).rglob("*.safetensors")):
        tensors |= {f"{path.name}:{k}": v for k, v in load_file(path).items()}
    assert tensors, f"no safetensors weights under {folder}"
    return tensors


def model_tensors(artifact: Path) -> dict[str, torch.Tensor]:
    """The tensors of a trainer artifact's model."""
    return tensors_under(Path(artifact) / "model")


def assert_same_weights(expected: Path, actual: Path) -> None:
    """The two trainer artifacts hold bitwise the same model."""
    expected_tensors, actual_tensors = model_tensors(expected), model_tensors(actual)
    assert expected_tensors.keys() == actual_tensors.keys()
    for name in expected_tensors:
        assert torch.equal(expected_tensors[name], actual_tensors[name]), name


def killed_then_resumed(stage: str, params: Any, inputs: Mapping[str, Path], results: Path) -> tuple[Path, Path]:
    """Run ``python -m stages.<stage>`` killed after step 3 (a checkpoint every 2 steps leaves step 2's), then again:
    it resumes from step 2 and ends. Returns the artifact and its work folder under ``results``."""
    out, work = results / stage / "resumed", results / "work" / stage / "resumed"
    command = [sys.executable, "-m", f"stages.{stage}", str(out), "--no-check-key"]
    command += ["--params", json.dumps(dataclasses.asdict(params))]
    command += ["--inputs", json.dumps({k: str(v) for k, v in inputs.items()})]
    env = {k: v for k, v in os.environ.items() if k != STOP_AFTER_ENV}
    killed = subprocess.run(command, cwd=ROOT, env=env | {STOP_AFTER_ENV: "3"}, capture_output=True, text=True)
    assert killed.returncode == STOPPED_EXIT_CODE, killed.stderr[-3000:]
    assert (work / CHECKPOINT).is_file() and not out.exists()
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stderr
    assert "\r" not in resumed.stderr and "train:" in resumed.stderr  # the bar as lines (stages.core.log_lines)
    assert "Loading weights" not in resumed.stderr
    return out, work


# --- index artifacts from synthetic embeddings ---


def clustered(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 random centres (what real embeddings look like more than white noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    vectors = centres[rng.integers(0, 20, rows)] + 0.35 * rng.standard_normal((rows, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_shards(folder: Path, vectors: np.ndarray, count: int) -> dict[str, Path]:
    """``count`` encode-like artifacts (contiguous row ranges) named shard_0 .. shard_<count-1>."""
    inputs = {}
    bounds = np.linspace(0, len(vectors), count + 1).astype(int)
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        shard = folder / f"encode-{number}"
        shard.mkdir(parents=True)
        ids = [f"doc{i}" for i in range(start, stop)]
        write_embeddings(shard / EMBEDDINGS, ids, vectors[start:stop], dtype="float32")
        inputs[f"shard_{number}"] = shard
    return inputs


def index_artifact(folder: Path, vectors: np.ndarray, shards: int = 1, **params) -> Path:
    """An `index` artifact built (with ``params`` over the index section's defaults) from ``vectors`` written as
    ``shards`` encode shards."""
    out = folder / "index"
    out.mkdir(parents=True)
    index_params = settings.params(IndexParams, "index", **params)
    summary = build_index(index_params, write_shards(folder / "shards", vectors, shards), out)
    kind_files = [p for p in out.rglob("*") if p.is_file() and p.name not in (DOC_IDS_FILE, KIND_FILE, SUMMARY)]
    assert summary["ntotal"] == len(vectors) and summary["bytes"] == sum(p.stat().st_size for p in kind_files)
    return out
