"""Inner-product search backends shared by `index`, `retrieve` (and ADORE's training loop).

- faiss (CPU, or GPU when faiss was built with it) over an `index` artifact (index.faiss + doc_ids.parquet);
- ``FlatTorchSearcher``: exact search as chunked matmul + top-k in torch, for a GPU when faiss has no GPU support.

Every searcher has ``.search(queries, k) -> (scores float32 (q, k), indices int64 (q, k))`` (row numbers, -1 where
fewer than k documents exist), ``.doc_ids`` (row number -> document id), ``.ntotal`` and ``.dim``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from stages.errors import ArtifactError, ConfigError

log = logging.getLogger("stages.search")

INDEX_FILE, DOC_IDS_FILE = "index.faiss", "doc_ids.parquet"
BACKENDS = ("auto", "faiss", "faiss-gpu", "torch")


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


def load_index(artifact_dir: Path) -> tuple["faiss.Index", list[str]]:  # noqa: F821
    """The faiss index and the document id of each of its rows."""
    import faiss

    artifact_dir = Path(artifact_dir)
    for name in (INDEX_FILE, DOC_IDS_FILE):
        if not (artifact_dir / name).is_file():
            raise ArtifactError(f"no {name}: not an index artifact", path=artifact_dir, fix="rerun the index stage")
    index = faiss.read_index(str(artifact_dir / INDEX_FILE))
    doc_ids = pq.read_table(artifact_dir / DOC_IDS_FILE, columns=["doc_id"]).column("doc_id").to_pylist()
    if len(doc_ids) != index.ntotal:
        raise ArtifactError(f"index holds {index.ntotal} vectors but {len(doc_ids)} doc ids", path=artifact_dir)
    return index, doc_ids


def faiss_has_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def flat_vectors(index) -> np.ndarray:
    """A flat index's stored vectors as an (ntotal, d) float32 view (no copy)."""
    import faiss

    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def searcher_for(index_artifact: Path, backend: str = "auto") -> FaissSearcher | FlatTorchSearcher:
    """A searcher over an index artifact.

    backend 'auto': faiss on CPU; on a GPU, faiss-gpu when faiss has GPU support, else (flat index) the torch
    searcher; 'faiss', 'faiss-gpu' and 'torch' force one.
    """
    import faiss

    if backend not in BACKENDS:
        raise ConfigError(f"unknown search backend {backend!r}", fix=f"use one of {BACKENDS}")
    index, doc_ids = load_index(index_artifact)
    flat = isinstance(index, faiss.IndexFlat)
    if backend == "auto":
        if not torch.cuda.is_available():
            backend = "faiss"
        elif faiss_has_gpu():
            backend = "faiss-gpu"
        else:
            backend = "torch" if flat else "faiss"
    if backend == "torch":
        if not flat:
            raise ConfigError("the torch backend searches flat indexes only", fix="use backend 'faiss' for PQ")
        log.info("search: torch flat searcher over %d vectors", index.ntotal)
        return FlatTorchSearcher(flat_vectors(index), doc_ids=doc_ids)
    if backend == "faiss-gpu":
        if not faiss_has_gpu():
            raise ConfigError("faiss has no GPU support here", fix="use backend 'auto', 'faiss' or 'torch'")
        resources = faiss.StandardGpuResources()
        log.info("search: faiss GPU over %d vectors", index.ntotal)
        return FaissSearcher(faiss.index_cpu_to_gpu(resources, 0, index), doc_ids, resources)
    log.info("search: faiss CPU over %d vectors", index.ntotal)
    return FaissSearcher(index, doc_ids)
