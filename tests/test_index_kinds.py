"""stages.ml.index_kinds: every kind is built, recorded in its artifact and searched in torch as faiss ranks it; readers
go by the record (never the faiss class); older artifacts fall back to summary.json, else fail clearly."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import clustered, index_artifact

from stages.core.errors import ArtifactError, ConfigError
from stages.ml.index_kinds import (
    KINDS, IndexKind, build_flat, open_flat, open_index, recorded_kind, searcher_for,
)
from stages.core.artifacts import KIND_FILE
from stages.ml.frozen_documents import frozen_documents

# params each kind needs on 32-dim vectors (a kind without an entry builds with the defaults)
KIND_PARAMS = {"pq": {"pq_m": 8, "pq_bits": 6, "train_size": 2000, "seed": 3}}


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(2000, 32)


@pytest.fixture(scope="module")
def flat_artifact(vectors, tmp_path_factory):
    return index_artifact(tmp_path_factory.mktemp("flat"), vectors)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_is_recorded_and_its_torch_searcher_scores_what_faiss_ranks_by(name, vectors, tmp_path):
    artifact = index_artifact(tmp_path, vectors, kind=name, **KIND_PARAMS.get(name, {}))
    assert json.loads((artifact / KIND_FILE).read_text()) == {"kind": name}
    kind, index, doc_ids = open_index(artifact)
    assert kind is KINDS[name] and index.ntotal == len(doc_ids) == len(vectors)
    queries = clustered(9, 32, seed=5)
    faiss_scores, faiss_rows = searcher_for(artifact, "faiss").search(queries, 10)
    if kind.torch_searcher is None:
        return
    searcher = searcher_for(artifact, "torch")
    torch_scores, torch_rows = searcher.search(queries, 10)
    np.testing.assert_allclose(torch_scores, faiss_scores, rtol=1e-4, atol=1e-4)
    assert (torch_rows == faiss_rows).mean() > 0.9  # the same ranking, up to ties
    # ADORE's loss scores with the searcher: the scores of faiss's rows are faiss's scores, with gradient to the queries
    query_tensor = torch.from_numpy(queries).requires_grad_()
    scores = searcher.scores(query_tensor, torch.from_numpy(faiss_rows))
    np.testing.assert_allclose(scores.detach().numpy(), faiss_scores, rtol=1e-4, atol=1e-4)
    scores.sum().backward()
    assert query_tensor.grad is not None and query_tensor.grad.abs().sum() > 0


def test_searchers_go_by_the_record_not_the_faiss_class(flat_artifact, tmp_path, monkeypatch):
    artifact = tmp_path / "index"
    shutil.copytree(flat_artifact, artifact)
    toy = lambda artifact, doc_ids, device: SimpleNamespace(name="toy", ntotal=len(doc_ids))  # noqa: E731
    monkeypatch.setitem(KINDS, "toy", IndexKind("toy", build_flat, open_flat, toy))
    (artifact / KIND_FILE).write_text(json.dumps({"kind": "toy"}))
    assert searcher_for(artifact, "torch").name == "toy" and searcher_for(artifact, "torch").ntotal == 2000
    monkeypatch.setitem(KINDS, "toy", IndexKind("toy", build_flat, open_flat, None))
    assert searcher_for(artifact, "auto").ntotal == 2000  # faiss, as a kind with no torch searcher is searched
    with pytest.raises(ConfigError, match="a toy index has no torch searcher"):
        searcher_for(artifact, "torch")
    with pytest.raises(ConfigError, match="ADORE searches its index in torch"):
        frozen_documents("reconstructed", {"index": artifact}, torch.device("cpu"))


def test_older_artifacts_read_the_kind_from_summary_json_else_fail_clearly(flat_artifact, tmp_path):
    shutil.copytree(flat_artifact, tmp_path, dirs_exist_ok=True)
    (tmp_path / KIND_FILE).unlink()
    with pytest.raises(ArtifactError, match="rerun the index stage"):
        recorded_kind(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "pq", "ntotal": 2000}))  # as the stage used to write
    assert recorded_kind(tmp_path) is KINDS["pq"]
    (tmp_path / KIND_FILE).write_text(json.dumps({"kind": "flat"}))  # the record wins
    assert recorded_kind(tmp_path) is KINDS["flat"]
    (tmp_path / KIND_FILE).write_text(json.dumps({"kind": "annoy"}))
    with pytest.raises(ArtifactError, match="index kind 'annoy' is not one this code knows"):
        recorded_kind(tmp_path)


def test_adore_reads_the_shards_only_for_a_lossy_kind_with_uncompressed_scoring():
    assert KINDS["pq"].scores_with_shards("uncompressed") and not KINDS["pq"].scores_with_shards("reconstructed")
    assert not any(kind.scores_with_shards("uncompressed") for kind in KINDS.values() if not kind.lossy)
