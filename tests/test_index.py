"""Stage `index`: flat = brute force; PQ is close to flat and smaller; building from shards streams correctly."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import clustered, index_artifact
from stages.core import settings
from stages.core.errors import ConfigError
from stages.index import IndexParams, build_index
from stages.ml.search import faiss_search, flat_vectors, load_index
from stages.core.artifacts import INDEX_FILE


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(3000, 32)


def test_flat_index_equals_brute_force(vectors, tmp_path):
    index, doc_ids = load_index(index_artifact(tmp_path, vectors))
    assert doc_ids == [f"doc{i}" for i in range(len(vectors))]
    queries = clustered(15, 32, seed=1)
    scores, indices = faiss_search(index, queries, 10)
    brute = queries @ vectors.T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    assert np.array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5, atol=1e-5)


def test_three_shards_build_the_same_index_as_one(vectors, tmp_path):
    one, _ = load_index(index_artifact(tmp_path / "one", vectors, shards=1))
    three, ids = load_index(index_artifact(tmp_path / "three", vectors, shards=3))
    assert ids == [f"doc{i}" for i in range(len(vectors))]
    assert np.array_equal(flat_vectors(one), flat_vectors(three))
    pq_params = {"kind": "pq", "pq_m": 8, "pq_bits": 6, "train_size": 2000, "seed": 3}
    pq_one = index_artifact(tmp_path / "pq-one", vectors, shards=1, **pq_params)
    pq_three = index_artifact(tmp_path / "pq-three", vectors, shards=3, **pq_params)
    queries = clustered(15, 32, seed=2)
    # the training sample is drawn from global row numbers, so the shard layout does not change it
    _, from_one = faiss_search(load_index(pq_one)[0], queries, 10)
    _, from_three = faiss_search(load_index(pq_three)[0], queries, 10)
    assert np.array_equal(from_one, from_three)


@pytest.mark.parametrize("opq", [False, True])
def test_pq_index_recalls_the_flat_top10_and_is_smaller(vectors, tmp_path, opq):
    flat_dir = index_artifact(tmp_path / "flat", vectors)
    pq_dir = index_artifact(tmp_path / "pq", vectors, kind="pq", pq_m=16, pq_bits=8, opq=opq, train_size=3000)
    queries = clustered(50, 32, seed=4)
    _, exact = faiss_search(load_index(flat_dir)[0], queries, 10)
    _, approximate = faiss_search(load_index(pq_dir)[0], queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    assert recall > 0.5
    assert (pq_dir / INDEX_FILE).stat().st_size < (flat_dir / INDEX_FILE).stat().st_size / 3


def test_pq_params_are_checked_against_the_data(vectors, tmp_path):
    with pytest.raises(ConfigError, match=r"does not divide the embedding dimension 32") as error:
        index_artifact(tmp_path / "a", vectors, kind="pq", pq_m=12)
    assert "[1, 2, 4, 8, 16, 32]" in error.value.fix
    with pytest.raises(ConfigError, match="needs at least 256 training vectors; there are 100"):
        index_artifact(tmp_path / "b", vectors, kind="pq", pq_m=8, pq_bits=8, train_size=100)


def test_inputs_must_be_numbered_shards(tmp_path):
    with pytest.raises(ConfigError, match="shard_0 .. shard_<n-1>"):
        build_index(settings.params(IndexParams, "index"), {"shard_1": tmp_path}, tmp_path)
