"""Stage `retrieve`: encode -> index -> retrieve end to end on the SciFact slice, scored by `score`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import encode_params

from stages.encode import encode
from stages.core.artifacts import EMBEDDINGS
from stages.core import settings
from stages.core.errors import ConfigError
from stages.index import IndexParams, build_index
from stages.retrieve import RetrieveParams, query_batch, retrieve
from stages.ml.measures import evaluate
from stages.core.tables import read_corpus, read_qrels, read_queries, read_run, write_embeddings, write_run
from stages.core.artifacts import RUN_TREC

TOP_K = 50


@pytest.fixture(scope="module")
def dense_index(prepared, tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dense")
    (folder / "encode").mkdir()
    (folder / "index").mkdir()
    encode(encode_params(model=str(tiny_model_dir), max_length=64), {"prepared": prepared}, folder / "encode")
    build_index(settings.params(IndexParams, "index"), {"shard_0": folder / "encode"}, folder / "index")
    return folder / "index"


def run_retrieve(prepared, index, tiny_model_dir, out: Path, **params) -> dict:
    out.mkdir(parents=True)
    params = {"model": str(tiny_model_dir), "split": "test", "top_k": TOP_K, "query_max_length": 32, **params}
    typed = settings.params(RetrieveParams, "retrieve", "encoder", **params)
    return retrieve(typed, {"prepared": prepared, "index": index}, out)


def test_dense_run_is_complete_ranked_and_scorable(prepared, dense_index, tiny_model_dir, tmp_path):
    summary = run_retrieve(prepared, dense_index, tiny_model_dir, tmp_path / "run")
    run = read_run(tmp_path / "run")
    queries = read_queries(prepared, "test")
    assert summary["queries"] == len(queries) and summary["top_k"] == TOP_K
    assert set(run["query_id"]) == set(queries["query_id"])
    assert set(run["doc_id"]) <= set(read_corpus(prepared)["doc_id"])
    for _, ranked in run.groupby("query_id"):
        assert ranked["rank"].tolist() == list(range(1, TOP_K + 1))
        assert np.all(np.diff(ranked["score"].to_numpy()) <= 1e-6)
        assert ranked["doc_id"].is_unique
    assert len((tmp_path / "run" / RUN_TREC).read_text().splitlines()) == len(run)
    assert (tmp_path / "run" / RUN_TREC).read_text().split("\n")[0].endswith(" dense")

    qrels = read_qrels(prepared, "test")
    per_query = evaluate(run, qrels, ["nDCG@10", "R@100"], relevance_level=1)
    assert per_query["query_id"].nunique() == qrels["query_id"].nunique()
    assert per_query["value"].between(0, 1).all()
    # 50 of ~230 documents: a random ranking already finds some positives in the top 50
    assert per_query.loc[per_query["measure"] == "R@100", "value"].mean() > 0


def test_torch_backend_gives_the_same_run(prepared, dense_index, tiny_model_dir, tmp_path):
    run_retrieve(prepared, dense_index, tiny_model_dir, tmp_path / "faiss", backend="faiss")
    run_retrieve(prepared, dense_index, tiny_model_dir, tmp_path / "torch", backend="torch")
    by_faiss, by_torch = read_run(tmp_path / "faiss"), read_run(tmp_path / "torch")
    np.testing.assert_allclose(by_faiss["score"], by_torch["score"], atol=1e-5)
    assert by_faiss[["query_id", "doc_id", "rank"]].equals(by_torch[["query_id", "doc_id", "rank"]])


def test_query_encoder_must_match_the_index_dimension(prepared, tiny_model_dir, tmp_path):
    shard = tmp_path / "shard"
    shard.mkdir()
    write_embeddings(shard / EMBEDDINGS, ["a", "b"], np.eye(2, 16, dtype=np.float32), "float32")
    (tmp_path / "index").mkdir()
    build_index(settings.params(IndexParams, "index"), {"shard_0": shard}, tmp_path / "index")
    with pytest.raises(ConfigError, match="32-dim vectors but the index holds 16-dim"):
        run_retrieve(prepared, tmp_path / "index", tiny_model_dir, tmp_path / "run")


def test_batches_of_queries_give_the_same_run(prepared, dense_index, tiny_model_dir, tmp_path, monkeypatch):
    whole = run_retrieve(prepared, dense_index, tiny_model_dir, tmp_path / "whole")
    monkeypatch.setattr("stages.retrieve.QUERY_BATCH", 3)
    batched = run_retrieve(prepared, dense_index, tiny_model_dir, tmp_path / "batched")
    assert batched["query_batch"] == 3 and whole["query_batch"] > whole["queries"]
    assert batched["rows"] == whole["rows"] == whole["queries"] * TOP_K
    by_whole, by_batches = read_run(tmp_path / "whole"), read_run(tmp_path / "batched")
    np.testing.assert_allclose(by_whole["score"], by_batches["score"], atol=1e-5)
    assert by_whole[["query_id", "doc_id", "rank"]].equals(by_batches[["query_id", "doc_id", "rank"]])
    assert by_whole["query_id"].is_monotonic_increasing  # rows sorted by (query_id, rank), as write_run sorts them
    (tmp_path / "rewritten").mkdir()
    write_run(by_batches, tmp_path / "rewritten", "dense")
    assert (tmp_path / "rewritten" / RUN_TREC).read_bytes() == (tmp_path / "batched" / RUN_TREC).read_bytes()


def test_query_batch_bounds_the_rows_of_a_batch():
    assert query_batch(200) == 65_536 and query_batch(1000) == 16_384  # multiples of the tokenizing chunk
    assert query_batch(10_000) == 1677 and query_batch(1 << 30) == 1
