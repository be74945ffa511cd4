"""Stage `encode`: contiguous shards concatenate to the 1-shard encoding; the `model` input wins; CLI params."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import encode_params

from stages.encode import encode, main, shard_range
from stages.core.artifacts import EMBEDDINGS
from stages.core.errors import ConfigError
from stages.ml.models import load_encoder, save_encoder
from stages.core.tables import read_corpus, read_embeddings, read_queries


def run_encode(prepared: Path, out: Path, inputs: dict | None = None, **params) -> dict:
    out.mkdir(parents=True)
    return encode(encode_params(**params), {"prepared": prepared, **(inputs or {})}, out)


def test_shard_ranges_cover_the_rows_once():
    ranges = [shard_range(10, i, 3) for i in range(3)]
    assert ranges == [(0, 3), (3, 6), (6, 10)]
    assert shard_range(2, 2, 3) == (1, 2) and shard_range(2, 0, 3) == (0, 0)


def test_two_shards_concatenate_to_the_one_shard_encoding(prepared, tiny_model_dir, tmp_path):
    common = {"model": str(tiny_model_dir), "max_length": 64, "batch_size": 16, "dtype": "float32"}
    whole = run_encode(prepared, tmp_path / "whole", **common)
    halves = [run_encode(prepared, tmp_path / f"half{i}", shard=i, num_shards=2, **common) for i in range(2)]
    ids, vectors = read_embeddings([tmp_path / "whole" / EMBEDDINGS])
    shard_ids, shard_vectors = read_embeddings([tmp_path / f"half{i}" / EMBEDDINGS for i in range(2)])
    corpus = read_corpus(prepared)
    assert ids == shard_ids == corpus["doc_id"].tolist()
    assert vectors.shape == (len(corpus), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(shard_vectors, vectors, atol=1e-5)
    assert [h["rows"] for h in halves] == [len(corpus) // 2, len(corpus) - len(corpus) // 2]
    assert whole["dim"] == 32 and whole["tokens"] > whole["rows"] and whole["tokens_per_s"] > 0
    # deterministic: encoding again gives the same bytes
    run_encode(prepared, tmp_path / "again", **common)
    assert np.array_equal(read_embeddings([tmp_path / "again" / EMBEDDINGS])[1], vectors)


def test_float16_storage_is_close_to_float32(prepared, tiny_model_dir, tmp_path):
    common = {"model": str(tiny_model_dir), "max_length": 32, "what": "queries", "split": "test"}
    run_encode(prepared, tmp_path / "f32", dtype="float32", **common)
    run_encode(prepared, tmp_path / "f16", dtype="float16", **common)
    ids32, f32 = read_embeddings([tmp_path / "f32" / EMBEDDINGS])
    ids16, f16 = read_embeddings([tmp_path / "f16" / EMBEDDINGS])
    assert ids32 == ids16 == read_queries(prepared, "test")["query_id"].tolist()
    np.testing.assert_allclose(f16, f32, rtol=2e-3, atol=2e-3)


def test_model_input_wins_over_the_model_param(prepared, tiny_model_dir, tmp_path):
    trained = tmp_path / "train_star"
    save_encoder(load_encoder(tiny_model_dir, pooling="cls", normalize=True), trained / "model")
    summary = run_encode(
        prepared, tmp_path / "out", inputs={"model": trained}, model="bundled", what="queries", max_length=32
    )
    assert summary["model"] == str(trained / "model") and summary["dim"] == 32
    assert (summary["pooling"], summary["normalize"]) == ("cls", True)
    vectors = read_embeddings([tmp_path / "out" / EMBEDDINGS])[1]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)


def test_cli_needs_every_param_and_writes_an_artifact(prepared, tiny_model_dir, tmp_path):
    params = encode_params(model=str(tiny_model_dir), what="queries", split="train", max_length=32).__dict__
    out = tmp_path / "artifact"
    argv = [str(out), "--params", json.dumps(params), "--inputs", json.dumps({"prepared": str(prepared)})]
    assert main(argv + ["--no-check-key"]) == 0
    assert (out / EMBEDDINGS).is_file() and (out / "manifest.json").is_file()
    assert json.loads((out / "summary.json").read_text())["rows"] == len(read_queries(prepared, "train"))
    del params["dtype"]
    assert main([str(tmp_path / "other"), "--params", json.dumps(params), "--no-check-key"]) == 2


@pytest.mark.parametrize(
    "bad", [{"what": "documents"}, {"dtype": "int8"}, {"shard": 2, "num_shards": 2}, {"num_shards": 0}]
)
def test_bad_params_are_config_errors(prepared, tmp_path, bad):
    with pytest.raises(ConfigError):
        run_encode(prepared, tmp_path / "out", **bad)


def test_encoding_pretokenized_ids_equals_encoding_the_texts(prepared, tiny_model_dir, tmp_path):
    from stages import tokenize
    from stages.core.errors import ArtifactError

    tokens = tmp_path / "tokens"
    params = json.dumps({"model": str(tiny_model_dir), "max_length": 64})
    argv = [str(tokens), "--no-check-key", "--params", params, "--inputs", json.dumps({"prepared": str(prepared)})]
    assert tokenize.main(argv) == 0
    summary = json.loads((tokens / "summary.json").read_text())
    assert summary["rows"] == len(read_corpus(prepared)) and (tokens / tokenize.TOKENS).is_file()
    common = {"model": str(tiny_model_dir), "max_length": 64, "batch_size": 16, "dtype": "float32", "num_shards": 2}
    counted = 0
    for shard in range(2):
        texts = run_encode(prepared, tmp_path / f"texts{shard}", shard=shard, **common)
        ids = run_encode(prepared, tmp_path / f"ids{shard}", {"tokens": tokens}, shard=shard, **common)
        assert (ids["rows"], ids["tokens"]) == (texts["rows"], texts["tokens"])
        from_texts = read_embeddings([tmp_path / f"texts{shard}" / EMBEDDINGS])
        from_ids = read_embeddings([tmp_path / f"ids{shard}" / EMBEDDINGS])
        assert from_ids[0] == from_texts[0]
        np.testing.assert_array_equal(from_ids[1], from_texts[1])
        counted += ids["tokens"]
    assert summary["tokens"] == counted
    with pytest.raises(ArtifactError, match="does not fit this encoder"):  # tokenized at another length
        run_encode(prepared, tmp_path / "wrong", {"tokens": tokens}, **{**common, "max_length": 32})
