"""stages.ml.search.PQTorchSearcher: the same top-k as faiss on the same PQ index (code widths, OPQ), decoding, and the
searcher_for hook; the Triton kernel where triton is installed (a GPU, or its CPU interpreter)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stages.core.errors import ConfigError
from stages.ml.index_kinds import searcher_for, write_kind
from stages.ml.search import PQTorchSearcher, faiss_search, pq_codes, pq_parts, reconstructed_vectors
from stages.core.artifacts import DOC_IDS_FILE, INDEX_FILE
from stages.core.tables import write_table

DIM, M = 32, 8


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)  # white noise: few documents share codes, so few tied scores
    return rng.standard_normal((4000, DIM)).astype(np.float32), rng.standard_normal((13, DIM)).astype(np.float32)


TRAINED: dict[tuple, object] = {}


def pq_index(docs: np.ndarray, nbits: int = 8, opq: bool = False):
    """A trained and filled PQ index (behind OPQ if asked), built once per (documents, nbits, opq)."""
    import faiss

    key = (len(docs), nbits, opq)
    if key not in TRAINED:
        pq = faiss.IndexPQ(DIM, M, nbits, faiss.METRIC_INNER_PRODUCT)
        pq.pq.cp.seed = 3
        index = pq
        if opq:
            rotation = faiss.OPQMatrix(DIM, M)
            rotation.niter = 5  # a rotation, if a rough one, is all the searcher needs (faiss default: 50)
            index = faiss.IndexPreTransform(rotation, pq)
        index.train(docs)
        index.add(docs)
        TRAINED[key] = index
    return TRAINED[key]


def assert_same_topk(scores, rows, expected_scores, expected_rows, tolerance: float = 1e-4) -> None:
    """Same scores, and the same rows wherever a score is not tied with another (ties may come in any order)."""
    np.testing.assert_allclose(scores, expected_scores, rtol=tolerance, atol=tolerance)
    for got, wanted, values in zip(rows, expected_rows, expected_scores):
        gaps = np.abs(values[:, None] - values[None, :]) + np.eye(len(values)) * 1e9
        untied = gaps.min(axis=1) > tolerance
        assert untied.mean() > 0.5
        assert np.array_equal(got[untied], wanted[untied])


@pytest.mark.parametrize("nbits,opq", [(8, False), (8, True), (4, False), (6, True), (10, False)])
def test_torch_pq_search_matches_faiss(data, nbits, opq):
    docs, queries = data
    index = pq_index(docs, nbits, opq)
    expected_scores, expected_rows = faiss_search(index, queries, 25)
    searcher = PQTorchSearcher.from_faiss(index, chunk_size=700, query_batch=5)  # 6 chunks, 3 query batches
    assert searcher.kernel == "torch" and searcher.ntotal == 4000 and searcher.dim == DIM
    scores, rows = searcher.search(queries, 25)
    assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (13, 25)
    assert_same_topk(scores, rows, expected_scores, expected_rows)


def test_decoding_matches_faiss_reconstruction(data):
    docs, queries = data
    index = pq_index(docs, 8, opq=True)
    searcher = PQTorchSearcher.from_faiss(index)
    rows = torch.tensor([[0, 5, 17], [3999, 2, 2]])
    decoded = searcher.decode(rows)
    assert decoded.shape == (2, 3, DIM)
    # OPQ is a rotation: scores in the PQ space equal queries . reconstructed vectors in the original space
    reconstructed = reconstructed_vectors(index)[rows.numpy()]
    transformed = searcher.transform_queries(torch.from_numpy(queries[:2]))
    np.testing.assert_allclose(
        torch.einsum("bd,bnd->bn", transformed, decoded).numpy(),
        np.einsum("bd,bnd->bn", queries[:2], reconstructed),
        rtol=1e-4,
        atol=1e-4,
    )


def test_codes_are_unpacked_like_faiss_decodes_them(data):
    docs, _ = data
    for nbits in (4, 6, 10):
        index = pq_index(docs, nbits)
        codes = pq_codes(index)
        centroids = index.pq.centroids
        table = np.asarray([centroids.at(i) for i in range(centroids.size())]).reshape(M, 2**nbits, -1)
        decoded = np.concatenate([table[m, codes[:, m]] for m in range(M)], axis=1)
        np.testing.assert_allclose(decoded, reconstructed_vectors(index), atol=1e-6)


def test_searcher_for_uses_the_torch_pq_searcher(data, tmp_path):
    import faiss

    docs, queries = data
    faiss.write_index(pq_index(docs, 8, opq=True), str(tmp_path / INDEX_FILE))
    write_table(pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(docs))]}), tmp_path / DOC_IDS_FILE)
    write_kind(tmp_path, "pq")
    by_torch, by_faiss = searcher_for(tmp_path, "torch"), searcher_for(tmp_path, "auto")
    assert isinstance(by_torch, PQTorchSearcher) and by_torch.doc_ids == by_faiss.doc_ids
    assert_same_topk(*by_torch.search(queries, 10), *by_faiss.search(queries, 10))
    scores, rows = by_torch.search(queries[:2], 5000)  # k beyond the corpus: padded like the flat searcher
    assert (rows[:, 4000:] == -1).all() and np.isneginf(scores[:, 4000:]).all()


def test_unsupported_indexes_and_kernels_are_refused(data):
    import faiss

    docs, _ = data
    flat_l2 = faiss.IndexPQ(DIM, M, 4)  # L2 metric
    flat_l2.train(docs)
    with pytest.raises(ConfigError, match="inner-product"):
        pq_parts(flat_l2)
    with pytest.raises(ConfigError, match="flat and PQ"):
        pq_parts(faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="Triton PQ kernel needs CUDA"):
            PQTorchSearcher.from_faiss(pq_index(docs, 4), kernel="triton")


KERNEL_CHECK = """
import torch
from stages.ml.pq_kernels import pq_scores

device = "cuda" if torch.cuda.is_available() else "cpu"
generator = torch.Generator().manual_seed(0)
for count, m, ksub, dsub, queries in ((300, 12, 256, 4, 5), (257, 8, 16, 8, 20)):
    codes = torch.randint(0, ksub, (count, m), generator=generator).to(torch.uint8)
    table = torch.randn(m * ksub, dsub, generator=generator)
    block = torch.randn(queries, m * dsub, generator=generator)
    vectors = torch.nn.functional.embedding(codes.long() + torch.arange(m) * ksub, table).reshape(count, -1)
    for gather_rows in (True, False):
        got = pq_scores(codes.to(device), table.to(device), block.to(device), ksub, block_n=64, gather_rows=gather_rows)
        torch.testing.assert_close(got.cpu(), block @ vectors.T, rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_triton_kernel_matches_the_torch_decoding():
    """On a GPU for real; without one in Triton's CPU interpreter (a fresh process: it is chosen at import)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = os.environ | ({} if torch.cuda.is_available() else {"TRITON_INTERPRET": "1"})
    result = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
