"""stages.ml.search: the torch flat searcher agrees with faiss; searchers over an index artifact
(`stages.ml.index_kinds.searcher_for`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.core.errors import ArtifactError, ConfigError
from stages.ml.index_kinds import open_index, searcher_for, write_kind
from stages.ml.search import FlatTorchSearcher, faiss_search
from stages.core.artifacts import DOC_IDS_FILE, VECTORS_DIR, vector_file
from stages.core.tables import write_embeddings, write_table


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
    """A flat index artifact as the stage writes one: the vectors (float32 here), the doc ids, the kind."""
    (folder / VECTORS_DIR).mkdir(parents=True, exist_ok=True)
    write_embeddings(folder / vector_file(0), [f"d{i}" for i in range(len(vectors))], vectors, dtype="float32")
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
    _, index, doc_ids = open_index(artifact)
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
        open_index(tmp_path)


def test_flat_searchers_read_float16_files_as_stored(data, tmp_path, monkeypatch):
    import torch

    from stages.core.tables import EmbeddingWriter
    from stages.ml.search import flat_faiss_index

    docs, queries = data
    monkeypatch.setattr(EmbeddingWriter, "GROUP_ROWS", 128)  # many row groups, read by threads ahead, kept in order
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    write_embeddings(files[0], [f"d{i}" for i in range(600)], docs[:600])  # float16, as encode writes them
    write_embeddings(files[1], [f"d{i}" for i in range(600, 1000)], docs[600:])
    stored = docs.astype(np.float16).astype(np.float32)
    searcher = FlatTorchSearcher.from_files(files, device="cpu", doc_ids=["x"] * 1000)
    assert searcher.matrix.dtype == torch.float32 and torch.equal(searcher.matrix, torch.from_numpy(stored))
    index = flat_faiss_index(files)
    assert np.array_equal(index.reconstruct_n(0, index.ntotal), stored)
    expected = faiss_search(flat_index(stored), queries, 10)
    assert all(np.array_equal(a, b) for a, b in zip(faiss_search(index, queries, 10), expected))
    assert np.array_equal(searcher.search(queries, 10)[1], expected[1])
