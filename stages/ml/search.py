"""Inner-product search backends shared by `index`, `retrieve` (and ADORE's training loop); which one searches an
index artifact is up to its kind (`stages.ml.index_kinds`).

- faiss (CPU, or GPU when faiss was built with it) over an `index` artifact: a PQ one's index.faiss, or for flat an
  IndexFlatIP built in memory from the artifact's embeddings files (`flat_faiss_index`); doc_ids.parquet maps rows;
- ``FlatTorchSearcher``: exact search as chunked matmul + top-k in torch, for a GPU when faiss has no GPU support,
  its matrix read straight from the embeddings files (``from_files``);
- ``PQTorchSearcher``: a PQ (optionally OPQ) index's codes on the device, scored by asymmetric distance computation
  (a Triton kernel on CUDA, `stages.ml.pq_kernels`), with the same scores as faiss's IndexPQ.

Every searcher has ``.search(queries, k) -> (scores float32 (q, k), indices int64 (q, k))`` (row numbers, -1 where
fewer than k documents exist), ``.doc_ids`` (row number -> document id), ``.ntotal`` and ``.dim``; the torch ones
also ``.scores(queries, rows)``, what they rank by, with gradient to the queries (ADORE's loss).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core import parquet_io
from ..core.artifacts import DOC_IDS_FILE, INDEX_FILE
from ..core.errors import ArtifactError, ConfigError
from ..core.tables import embedding_dim, embedding_rows, iter_vectors

log = logging.getLogger("stages.ml.search")



class FlatTorchSearcher:
    """Exact inner-product search over an (N, d) matrix held on ``device`` (float16 on CUDA, float32 on CPU)."""

    def __init__(
        self,
        embeddings: np.ndarray | torch.Tensor,
        device: str | torch.device | None = None,
        doc_ids: list[str] | None = None,
        chunk_size: int = 1 << 20,
        query_batch: int = 1024,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        rows, dim = embeddings.shape
        self.matrix = torch.empty((rows, dim), dtype=self.dtype, device=self.device)
        for start in range(0, rows, chunk_size):  # copy piecewise: no full-size temporary on the device
            block = embeddings[start : start + chunk_size]
            block = torch.as_tensor(np.asarray(block) if not isinstance(block, torch.Tensor) else block)
            self.matrix[start : start + len(block)] = block.to(self.device, self.dtype)
        self.doc_ids = doc_ids
        self.chunk_size = chunk_size
        self.query_batch = query_batch

    @classmethod
    def from_files(cls, files: list[Path], device=None, doc_ids: list[str] | None = None) -> "FlatTorchSearcher":
        """Over embeddings files (`stages.core.tables`), read a row group at a time into the device matrix (float16
        as stored on CUDA, float32 on CPU): no host copy of all of them besides."""
        searcher = cls(torch.empty((0, embedding_dim(files))), device=device, doc_ids=doc_ids)
        shape = (embedding_rows(files), searcher.dim)
        searcher.matrix = torch.empty(shape, dtype=searcher.dtype, device=searcher.device)
        fill_rows(searcher.matrix, files)
        return searcher

    @property
    def ntotal(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @torch.inference_mode()
    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = torch.as_tensor(queries)
        count = queries.shape[0]
        scores = np.full((count, k), -np.inf, dtype=np.float32)
        indices = np.full((count, k), -1, dtype=np.int64)
        kept = min(k, self.ntotal)
        for start in range(0, count, self.query_batch):
            block = queries[start : start + self.query_batch].to(self.device, self.dtype)
            best_scores, best_indices = self._search_block(block, kept)
            scores[start : start + len(block), :kept] = best_scores.float().cpu().numpy()
            indices[start : start + len(block), :kept] = best_indices.cpu().numpy()
        return scores, indices

    @torch.no_grad()
    def topk(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `search` for ``k <= ntotal``, but the results stay on the device as tensors (scores in float32)."""
        blocks = [
            self._search_block(queries[start : start + self.query_batch].to(self.device, self.dtype), k)
            for start in range(0, queries.shape[0], self.query_batch)
        ]
        return torch.cat([s for s, _ in blocks]).float(), torch.cat([i for _, i in blocks])

    def scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, n) float32 inner products of query b with the documents ``rows[b]``; gradient flows to the queries."""
        return torch.einsum("bd,bnd->bn", queries.float(), self.matrix[rows].float())

    def _search_block(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k over corpus chunks, merging each chunk's top-k into the running best."""
        best_scores = torch.empty((len(queries), 0), dtype=self.dtype, device=self.device)
        best_indices = torch.empty((len(queries), 0), dtype=torch.int64, device=self.device)
        for start in range(0, self.ntotal, self.chunk_size):
            chunk_scores = queries @ self.matrix[start : start + self.chunk_size].T
            top_scores, top_indices = torch.topk(chunk_scores, min(k, chunk_scores.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, top_scores], dim=1)
            merged_indices = torch.cat([best_indices, top_indices + start], dim=1)
            best_scores, position = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
            best_indices = torch.gather(merged_indices, 1, position)
        return best_scores, best_indices


def faiss_search(index, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32, indices int64) from a faiss index."""
    if isinstance(queries, torch.Tensor):
        queries = queries.detach().float().cpu().numpy()
    scores, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)


class FaissSearcher:
    """A faiss index (CPU or GPU) with its row -> document id list."""

    def __init__(self, index, doc_ids: list[str], resources=None):
        self.index = index
        self.doc_ids = doc_ids
        self.resources = resources  # a GPU index must keep its StandardGpuResources alive

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_search(self.index, queries, k)


def read_doc_ids(artifact_dir: Path) -> list[str]:
    """The document id of each row of an index artifact."""
    path = Path(artifact_dir) / DOC_IDS_FILE
    if not path.is_file():
        raise ArtifactError(f"no {DOC_IDS_FILE}: not an index artifact", path=artifact_dir, fix="rerun the index stage")
    return parquet_io.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()


def read_faiss_index(artifact_dir: Path) -> "faiss.Index":  # noqa: F821
    """The faiss index an index artifact stores (index.faiss)."""
    import faiss

    path = Path(artifact_dir) / INDEX_FILE
    if not path.is_file():
        raise ArtifactError(f"no {INDEX_FILE}: not an index artifact", path=artifact_dir, fix="rerun the index stage")
    return faiss.read_index(str(path))


def flat_faiss_index(files: list[Path]) -> "faiss.IndexFlatIP":  # noqa: F821
    """An exact inner-product index in memory over embeddings files, float32, filled a batch at a time into storage
    sized once (adding would grow it by doubling)."""
    import faiss

    rows, dim = embedding_rows(files), embedding_dim(files)
    index = faiss.IndexFlatIP(dim)
    index.codes.resize(rows * dim * 4)
    if rows:
        fill_rows(torch.from_numpy(faiss.rev_swig_ptr(index.get_xb(), rows * dim).reshape(rows, dim)), files)
    index.ntotal = rows
    return index


def fill_rows(matrix: torch.Tensor, files: list[Path]) -> None:
    """``matrix`` (rows, d), any dtype and device, filled with the embeddings files' rows a row group at a time,
    converted by torch (vectorised; numpy's float16 conversion is 3x slower)."""
    start = 0
    with warnings.catch_warnings():  # arrow's arrays are read-only; they are only read from
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        for batch in iter_vectors(files, None):
            matrix[start : start + len(batch)].copy_(torch.from_numpy(batch))
            start += len(batch)


def faiss_has_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


# --- product quantisation in torch ---------------------------------------------------------------------------------

PQ_KERNELS = ("auto", "triton", "torch")


def merge_topk(
    best: tuple[torch.Tensor, torch.Tensor], scores: torch.Tensor, indices: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` of the running best (scores, indices) and one more block of them."""
    merged_scores, merged_indices = torch.cat([best[0], scores], dim=1), torch.cat([best[1], indices], dim=1)
    top, position = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
    return top, torch.gather(merged_indices, 1, position)


def pq_parts(index) -> tuple["faiss.IndexPQ", np.ndarray | None, np.ndarray | None]:  # noqa: F821
    """The IndexPQ inside a faiss index and the linear map its queries go through first (an IndexPreTransform's chain
    of linear transforms such as OPQ, composed into ``y = A x + b``; None, None without one)."""
    import faiss

    index = faiss.downcast_index(index)
    matrix = bias = None
    if isinstance(index, faiss.IndexPreTransform):
        for position in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(position))
            if not isinstance(transform, faiss.LinearTransform):
                kind = type(transform).__name__
                raise ConfigError(
                    f"the torch PQ searcher supports linear pre-transforms (OPQ, PCA) only, not {kind}",
                    fix="use search backend 'faiss'",
                )
            a = faiss.vector_to_array(transform.A).reshape(transform.d_out, transform.d_in).astype(np.float64)
            b = faiss.vector_to_array(transform.b).astype(np.float64) if transform.have_bias else np.zeros(len(a))
            matrix, bias = (a, b) if matrix is None else (a @ matrix, a @ bias + b)
        index = faiss.downcast_index(index.index)
    if not isinstance(index, faiss.IndexPQ):
        raise ConfigError(
            f"the torch searchers handle flat and PQ (optionally OPQ) indexes, not {type(index).__name__}",
            fix="use search backend 'faiss'",
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ConfigError("the torch PQ searcher needs an inner-product index", fix="use search backend 'faiss'")
    return index, matrix, bias


def pq_codes(pq_index, rows_per_block: int = 1 << 20) -> np.ndarray:
    """An IndexPQ's codes as an (ntotal, M) array of centroid numbers: uint8 for up to 8 bits, else int32.

    faiss packs codes of other widths as one little-endian bit string per vector (sub-quantiser m at bit m * nbits).
    """
    import faiss

    m, nbits, count = pq_index.pq.M, pq_index.pq.nbits, pq_index.ntotal
    raw = faiss.vector_to_array(pq_index.codes).reshape(count, pq_index.code_size)
    if nbits == 8:
        return raw
    codes = np.empty((count, m), dtype=np.uint8 if nbits < 8 else np.int32)
    weights = (1 << np.arange(nbits)).astype(np.int32)
    for start in range(0, count, rows_per_block):
        bits = np.unpackbits(raw[start : start + rows_per_block], axis=1, bitorder="little")[:, : m * nbits]
        codes[start : start + len(bits)] = (bits.reshape(len(bits), m, nbits).astype(np.int32) * weights).sum(axis=2)
    return codes


def reconstructed_vectors(index, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) of a faiss index as it reconstructs them (PQ: the decoded centroids, mapped back through an
    OPQ rotation), float32 (rows, d)."""
    stop = index.ntotal if stop is None else stop
    return index.reconstruct_n(start, stop - start)


class PQTorchSearcher:
    """Inner-product search over product-quantisation codes held on ``device`` by asymmetric distance computation.

    The score of query q and document n is ``sum_m <T(q)_m, centroid[m, code[n, m]]>`` (T: the optional linear
    pre-transform, e.g. OPQ; applied to the queries), what faiss's IndexPQ computes with per-query lookup tables.
    Only the (N, M) codes and the (M, ksub, dsub) centroids are resident. On CUDA a Triton kernel decodes tiles of
    codes on the fly and multiplies them with the queries on the tensor cores (`stages.ml.pq_kernels`); elsewhere
    (or with ``kernel='torch'``) chunks of codes are decoded with ``F.embedding`` and multiplied with a matmul.
    Tables and queries are float16 on CUDA (float32 accumulation) and float32 on CPU, unless ``dtype`` says.
    """

    def __init__(
        self,
        codes: np.ndarray | torch.Tensor,
        centroids: np.ndarray | torch.Tensor,
        transform: tuple[np.ndarray, np.ndarray] | None = None,
        doc_ids: list[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        chunk_size: int | None = None,
        query_batch: int = 64,
        kernel: str = "auto",
    ):
        if kernel not in PQ_KERNELS:
            raise ConfigError(f"unknown PQ kernel {kernel!r}", fix=f"use one of {PQ_KERNELS}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.m, self.ksub, self.dsub = (int(n) for n in centroids.shape)
        if codes.shape[1] != self.m:
            raise ValueError(f"codes have {codes.shape[1]} columns for {self.m} sub-quantisers")
        self.codes = torch.as_tensor(codes).to(self.device)
        self.table = torch.as_tensor(centroids).reshape(self.m * self.ksub, self.dsub).to(self.device, self.dtype)
        self.offsets = torch.arange(self.m, device=self.device) * self.ksub
        self.matrix = self.bias = None
        if transform is not None:
            self.matrix = torch.as_tensor(np.asarray(transform[0]), dtype=torch.float32, device=self.device)
            self.bias = torch.as_tensor(np.asarray(transform[1]), dtype=torch.float32, device=self.device)
        self.doc_ids = doc_ids
        self.query_batch = query_batch
        self.kernel = self._pick_kernel(kernel)
        default_chunk = (1 << 23 if self.kernel == "triton" else 1 << 19) if self.device.type == "cuda" else 1 << 16
        self.chunk_size = chunk_size or default_chunk

    @classmethod
    def from_faiss(cls, index, doc_ids: list[str] | None = None, **options) -> "PQTorchSearcher":
        """From a faiss IndexPQ, or an IndexPreTransform (OPQ / linear) over one; inner product only."""
        import faiss

        pq_index, matrix, bias = pq_parts(index)
        centroids = faiss.vector_to_array(pq_index.pq.centroids).reshape(pq_index.pq.M, pq_index.pq.ksub, -1)
        transform = None if matrix is None else (matrix.astype(np.float32), bias.astype(np.float32))
        return cls(pq_codes(pq_index), centroids, transform, doc_ids=doc_ids, **options)

    def _pick_kernel(self, kernel: str) -> str:
        if kernel == "torch" or (kernel == "auto" and self.device.type != "cuda"):
            return "torch"
        from_triton = self.device.type == "cuda" and importlib.util.find_spec("triton") is not None
        if from_triton:
            from .pq_kernels import supports

            from_triton = supports(self.m, self.dsub)
        if kernel == "triton" and not from_triton:
            raise ConfigError(
                f"the Triton PQ kernel needs CUDA, triton and a power-of-two sub-vector size (here {self.dsub})",
                fix="use kernel 'torch' or 'auto'",
            )
        return "triton" if from_triton else "torch"

    @property
    def ntotal(self) -> int:
        return int(self.codes.shape[0])

    @property
    def dim(self) -> int:
        """The dimension of the queries (before the pre-transform)."""
        return int(self.matrix.shape[1]) if self.matrix is not None else self.m * self.dsub

    def transform_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """The queries as the PQ sees them (through the pre-transform), float32; differentiable."""
        queries = queries.float()
        if self.matrix is None:
            return queries
        return queries @ self.matrix.to(queries.device).T + self.bias.to(queries.device)

    def decode(self, rows: torch.Tensor) -> torch.Tensor:
        """The PQ-space vectors (decoded centroids) of ``rows`` (any shape), float32 (*rows.shape, M * dsub).

        ``transform_queries(q) @ decode(rows).T`` are the scores the search ranks by."""
        codes = self.codes[rows.to(self.device)].long()
        return torch.nn.functional.embedding(codes + self.offsets, self.table).flatten(-2).float()

    def scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, n) float32 PQ scores of query b with the documents ``rows[b]`` (the query through the pre-transform,
        the documents decoded): what the search ranks by; gradient flows to the queries."""
        return torch.einsum("bd,bnd->bn", self.transform_queries(queries).float(), self.decode(rows))

    @torch.no_grad()
    def topk(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores float32, indices int64) of the top ``k <= ntotal`` documents, as tensors on the device."""
        queries = torch.as_tensor(queries)
        results = []
        for start in range(0, queries.shape[0], self.query_batch):
            block = self.transform_queries(queries[start : start + self.query_batch].to(self.device))
            results.append(self._search_block(block.to(self.dtype), k))
        return torch.cat([s for s, _ in results]), torch.cat([i for _, i in results])

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = torch.as_tensor(queries)
        scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        indices = np.full((queries.shape[0], k), -1, dtype=np.int64)
        kept = min(k, self.ntotal)
        if kept:
            top_scores, top_indices = self.topk(queries, kept)
            scores[:, :kept], indices[:, :kept] = top_scores.cpu().numpy(), top_indices.cpu().numpy()
        return scores, indices

    def _search_block(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        best = (
            torch.empty((len(queries), 0), dtype=torch.float32, device=self.device),
            torch.empty((len(queries), 0), dtype=torch.int64, device=self.device),
        )
        for start in range(0, self.ntotal, self.chunk_size):
            scores = self._chunk_scores(queries, start, min(self.ntotal, start + self.chunk_size))
            top, position = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            best = merge_topk(best, top, position + start, k)
        return best

    def _chunk_scores(self, queries: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(queries, stop - start) float32 scores of documents [start, stop)."""
        if self.kernel == "triton":
            try:
                from .pq_kernels import pq_scores

                return pq_scores(self.codes[start:stop], self.table, queries, self.ksub)
            except Exception as error:  # noqa: BLE001 - e.g. no C compiler for Triton's launcher on this machine
                log.warning("Triton PQ kernel failed (%s: %s); using the torch decode + matmul", type(error).__name__, error)
                self.kernel = "torch"
                self.chunk_size = min(self.chunk_size, 1 << 19)
        index_dtype = torch.int32 if self.device.type == "cuda" else torch.int64
        entries = self.codes[start:stop].to(index_dtype) + self.offsets.to(index_dtype)
        vectors = torch.nn.functional.embedding(entries, self.table).reshape(stop - start, -1)
        return (queries @ vectors.T).float()

