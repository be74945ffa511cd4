"""stages.ml.search: the torch flat searcher agrees with faiss; searchers over an index artifact
(`stages.ml.index_kinds.searcher_for`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.core.errors import ArtifactError, ConfigError
from stages.ml.index_kinds import searcher_for, write_kind
from stages.ml.search import FlatTorchSearcher, faiss_search, load_index
from stages.core.artifacts import DOC_IDS_FILE, INDEX_FILE
from stages.core.tables import write_table


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((1000, 16)).astype(np.float32), rng.standard_normal((23, 16)).astype(np.float32)


def flat_index(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def write_index_artifact(folder, vectors: np.ndarray):
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(flat_index(vectors), str(folder / INDEX_FILE))
    write_table(pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(vectors))]}), folder / DOC_IDS_FILE)
    write_kind(folder, "flat")
    return folder


def test_torch_searcher_matches_faiss_across_chunks(data):
    docs, queries = data
    expected_scores, expected_indices = faiss_search(flat_index(docs), queries, 10)
    searcher = FlatTorchSearcher(docs, device="cpu", chunk_size=64, query_batch=7)  # 16 chunks, 4 query batches
    scores, indices = searcher.search(queries, 10)
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == (23, 10)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert np.array_equal(indices, expected_indices)  # continuous random data: no ties
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_torch_searcher_pads_when_k_exceeds_the_corpus(data):
    docs, queries = data
    scores, indices = FlatTorchSearcher(docs[:5], device="cpu", chunk_size=2).search(queries[:3], 8)
    assert np.all(indices[:, 5:] == -1) and np.all(np.isneginf(scores[:, 5:]))
    assert sorted(indices[0, :5]) == [0, 1, 2, 3, 4]


def test_searcher_for_backends_agree(data, tmp_path):
    docs, queries = data
    artifact = write_index_artifact(tmp_path / "index", docs)
    index, doc_ids = load_index(artifact)
    assert index.ntotal == 1000 and doc_ids[:2] == ["d0", "d1"]
    by_faiss = searcher_for(artifact, "auto")  # no GPU here: faiss on CPU
    by_torch = searcher_for(artifact, "torch")
    assert by_faiss.doc_ids == by_torch.doc_ids == doc_ids
    assert by_faiss.dim == by_torch.dim == 16 and by_faiss.ntotal == by_torch.ntotal == 1000
    faiss_scores, faiss_indices = by_faiss.search(queries, 5)
    torch_scores, torch_indices = by_torch.search(queries, 5)
    assert np.array_equal(faiss_indices, torch_indices)
    np.testing.assert_allclose(faiss_scores, torch_scores, rtol=1e-5, atol=1e-5)


def test_searcher_for_rejects_bad_backends_and_artifacts(data, tmp_path):
    artifact = write_index_artifact(tmp_path / "index", data[0])
    with pytest.raises(ConfigError, match="unknown search backend"):
        searcher_for(artifact, "annoy")
    with pytest.raises(ArtifactError, match="not an index artifact"):
        load_index(tmp_path)
