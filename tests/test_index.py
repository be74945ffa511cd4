"""Stage `index`: flat = brute force; PQ is close to flat and smaller; building from shards streams correctly."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import clustered, index_artifact
from stages.core import settings
from stages.core.errors import ConfigError
from stages.index import IndexParams, build_index
from stages.ml.index_kinds import open_index
from stages.ml.search import faiss_search
from stages.core.artifacts import EMBEDDINGS, INDEX_FILE, vector_files


def load_index(artifact):
    """(faiss index, doc ids) of an index artifact."""
    return open_index(artifact)[1:]


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
    assert np.array_equal(one.reconstruct_n(0, one.ntotal), three.reconstruct_n(0, three.ntotal))
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
    flat_bytes = sum(p.stat().st_size for p in vector_files(flat_dir))
    assert (pq_dir / INDEX_FILE).stat().st_size < flat_bytes / 3


def test_pq_params_are_checked_against_the_data(vectors, tmp_path):
    with pytest.raises(ConfigError, match=r"does not divide the embedding dimension 32") as error:
        index_artifact(tmp_path / "a", vectors, kind="pq", pq_m=12)
    assert "[1, 2, 4, 8, 16, 32]" in error.value.fix
    with pytest.raises(ConfigError, match="needs at least 256 training vectors; there are 100"):
        index_artifact(tmp_path / "b", vectors, kind="pq", pq_m=8, pq_bits=8, train_size=100)


def test_inputs_must_be_numbered_shards(tmp_path):
    with pytest.raises(ConfigError, match="shard_0 .. shard_<n-1>"):
        build_index(settings.params(IndexParams, "index"), {"shard_1": tmp_path}, tmp_path)


def store_artifacts(folder, vectors, shards: int, link_fails: bool, monkeypatch):
    """Encode artifacts of ``vectors`` and a flat index over them, written through the store as a run writes them."""
    from helpers import write_shards

    from stages.core import store

    inputs, results = {}, folder / "results"
    for name, shard in write_shards(folder / "raw", vectors, shards).items():
        with store.write_artifact(results / "encode" / name, "encode", {"shard": name}, {}, check_key=False) as tmp:
            (shard / EMBEDDINGS).rename(tmp / EMBEDDINGS)
        inputs[name] = results / "encode" / name
    if link_fails:
        monkeypatch.setattr("os.link", lambda *args: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    with store.write_artifact(results / "index" / "flat", "index", {"kind": "flat"}, inputs, check_key=False) as tmp:
        summary = build_index(settings.params(IndexParams, "index"), inputs, tmp)
    return inputs, results / "index" / "flat", summary


@pytest.mark.parametrize("link_fails", [False, True])
def test_flat_holds_the_encode_files_once_and_outlives_them(vectors, tmp_path, monkeypatch, caplog, link_fails):
    import json
    import shutil

    from stages.core import store

    inputs, index, summary = store_artifacts(tmp_path, vectors, 3, link_fails, monkeypatch)
    files = vector_files(index)
    assert not (index / INDEX_FILE).exists() and len(files) == 3
    for number, file in enumerate(files):  # the shard's very file (a copy where a link fails), recorded with its hash
        source = inputs[f"shard_{number}"] / EMBEDDINGS
        assert file.samefile(source) != link_fails and file.read_bytes() == source.read_bytes()
        recorded = json.loads((inputs[f"shard_{number}"] / "manifest.json").read_text())["files"][EMBEDDINGS]
        assert store.read_manifest(index)["files"][f"vectors/{file.name}"]["sha256"] == recorded["sha256"]
    assert summary["linked_bytes"] == (0 if link_fails else summary["bytes"])
    assert ("copying it" in caplog.text) == link_fails
    queries = clustered(15, 32, seed=6)
    before = faiss_search(open_index(index)[1], queries, 10)
    assert store.verify(tmp_path / "results") == [] and store.damage(index) is None
    shutil.rmtree(tmp_path / "results" / "encode")  # what prune does to an encode artifact no config reaches
    assert store.verify(tmp_path / "results") == [] and store.damage(index) is None
    after = faiss_search(open_index(index)[1], queries, 10)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
