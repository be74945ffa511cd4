"""Index kinds (the ``index.kind`` setting): how the `index` stage builds each one, how torch searches it (`retrieve`
on a GPU without faiss-gpu; ADORE, whose loss scores with that searcher), and whether ADORE may score with the
uncompressed embeddings instead. The index artifact records its kind (kind.json); readers look the kind up here and
never guess it from a faiss class. A new kind is one entry of `KINDS` (and the schema's enum) plus its test.

The plan reads `KINDS`, so faiss, torch and the searchers are imported where they are used, not at the top.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.artifacts import KIND_FILE, SUMMARY
from ..core.errors import ArtifactError, ConfigError

log = logging.getLogger("stages.ml.index_kinds")

BACKENDS = ("auto", "faiss", "faiss-gpu", "torch")


@dataclass(frozen=True)
class IndexKind:
    name: str
    build: Callable[[Any, int, Callable[[], Any]], tuple[Any, int]]
    """(IndexParams, dim, a function giving the training sample) -> (an empty faiss index, ready for adding; the
    number of vectors it was trained on)."""
    torch_searcher: Callable[[Any, list[str], Any], Any] | None
    """(faiss index, doc ids, device or None) -> a `stages.ml.search` torch searcher (``topk``, and ``scores``: what
    ADORE's loss scores with); None: searched by faiss only, and ADORE cannot train on it."""
    lossy: bool = False
    """It stores approximations of the embeddings, so ADORE may score with the encode shards instead."""
    check: Callable[[Any, int], None] | None = None
    """(IndexParams, dim): refuses params this kind cannot build, before any work."""
    exact: bool = False
    """Its search is exhaustive over the exact embeddings: the kind negatives are mined with."""

    def scores_with_shards(self, pq_scoring: str) -> bool:
        """Whether ADORE (its ``pq_scoring``) reads the encode shards, inputs ``shard_*``, on this kind."""
        return self.lossy and pq_scoring == "uncompressed"


# --- flat: exact inner product -------------------------------------------------------------------------------------


def build_flat(params: Any, dim: int, sample: Callable[[], Any]) -> tuple[Any, int]:
    import faiss

    return faiss.IndexFlatIP(dim), 0


def flat_torch_searcher(index: Any, doc_ids: list[str], device: Any) -> Any:
    from .search import FlatTorchSearcher, flat_vectors

    return FlatTorchSearcher(flat_vectors(index), device=device, doc_ids=doc_ids)


# --- pq: product quantisation (IndexPQ, optionally behind an OPQ rotation) -----------------------------------------


def check_pq(params: Any, dim: int) -> None:
    if params.pq_m < 1 or dim % params.pq_m:
        divisors = [m for m in range(1, dim + 1) if dim % m == 0]
        raise ConfigError(
            f"pq_m={params.pq_m} does not divide the embedding dimension {dim}", fix=f"choose pq_m among {divisors}"
        )
    if not 1 <= params.pq_bits <= 16:
        raise ConfigError(f"pq_bits={params.pq_bits}", fix="choose pq_bits between 1 and 16 (8 is usual)")


def build_pq(params: Any, dim: int, sample: Callable[[], Any]) -> tuple[Any, int]:
    import faiss

    vectors = sample()
    if len(vectors) < 2**params.pq_bits:
        raise ConfigError(
            f"PQ with pq_bits={params.pq_bits} needs at least {2 ** params.pq_bits} training vectors; "
            f"there are {len(vectors)}",
            fix="lower pq_bits, raise train_size, or use the flat index",
        )
    index = faiss.IndexPQ(dim, params.pq_m, params.pq_bits, faiss.METRIC_INNER_PRODUCT)
    index.pq.cp.seed = params.seed
    if params.opq:
        index = faiss.IndexPreTransform(faiss.OPQMatrix(dim, params.pq_m), index)
    log.info("training %s on %d vectors of dim %d", "OPQ+PQ" if params.opq else "PQ", len(vectors), dim)
    index.train(vectors)
    return index, len(vectors)


def pq_torch_searcher(index: Any, doc_ids: list[str], device: Any) -> Any:
    from .search import PQTorchSearcher

    return PQTorchSearcher.from_faiss(index, doc_ids=doc_ids, device=device)


KINDS: dict[str, IndexKind] = {
    kind.name: kind
    for kind in (
        IndexKind("flat", build_flat, flat_torch_searcher, exact=True),
        IndexKind("pq", build_pq, pq_torch_searcher, lossy=True, check=check_pq),
    )
}


# --- the record in the artifact, and reading it back ---------------------------------------------------------------


def write_kind(artifact_dir: Path, name: str) -> None:
    (Path(artifact_dir) / KIND_FILE).write_text(json.dumps({"kind": name}) + "\n")


def recorded_kind(artifact_dir: Path) -> IndexKind:
    """The kind an index artifact records: kind.json; an artifact made before kind.json existed has it only in its
    summary.json (the stage's returned "kind"), which is read then."""
    artifact_dir = Path(artifact_dir)
    record, summary = artifact_dir / KIND_FILE, artifact_dir / SUMMARY
    if record.is_file():
        name = json.loads(record.read_text()).get("kind")
    elif summary.is_file():
        name = json.loads(summary.read_text()).get("kind")
    else:
        name = None
    if name is None:
        raise ArtifactError(
            f"no {KIND_FILE} (nor a summary.json naming the kind): this index was not made by the index stage",
            path=artifact_dir,
            fix="rerun the index stage",
        )
    if name not in KINDS:
        raise ArtifactError(
            f"index kind {name!r} is not one this code knows ({sorted(KINDS)})",
            path=artifact_dir,
            fix="rebuild the index with a known kind",
        )
    return KINDS[name]


def open_index(artifact_dir: Path) -> tuple[IndexKind, Any, list[str]]:
    """(its recorded kind, the faiss index, the document id of each row) of an index artifact."""
    from .search import load_index

    index, doc_ids = load_index(artifact_dir)
    return recorded_kind(artifact_dir), index, doc_ids


def searcher_for(index_artifact: Path, backend: str = "auto") -> Any:
    """A searcher over an index artifact.

    backend 'auto': faiss on CPU; on a GPU, faiss-gpu when faiss has GPU support, else the kind's torch searcher
    (faiss if it has none); 'faiss', 'faiss-gpu' and 'torch' force one.
    """
    import faiss
    import torch

    from .search import FaissSearcher, faiss_has_gpu

    if backend not in BACKENDS:
        raise ConfigError(f"unknown search backend {backend!r}", fix=f"use one of {BACKENDS}")
    kind, index, doc_ids = open_index(index_artifact)
    if backend == "auto":
        if not torch.cuda.is_available():
            backend = "faiss"
        elif faiss_has_gpu():
            backend = "faiss-gpu"
        else:
            backend = "torch" if kind.torch_searcher is not None else "faiss"
    if backend == "torch":
        if kind.torch_searcher is None:
            raise ConfigError(f"a {kind.name} index has no torch searcher", fix="use search backend 'auto' or 'faiss'")
        log.info("search: torch %s searcher over %d vectors", kind.name, index.ntotal)
        return kind.torch_searcher(index, doc_ids, None)
    if backend == "faiss-gpu":
        if not faiss_has_gpu():
            raise ConfigError("faiss has no GPU support here", fix="use backend 'auto', 'faiss' or 'torch'")
        resources = faiss.StandardGpuResources()
        log.info("search: faiss GPU over %d vectors", index.ntotal)
        return FaissSearcher(faiss.index_cpu_to_gpu(resources, 0, index), doc_ids, resources)
    log.info("search: faiss CPU over %d vectors", index.ntotal)
    return FaissSearcher(index, doc_ids)


def exact_kind() -> str:
    """The kind that searches exhaustively over the exact embeddings (mining negatives needs no approximation)."""
    return next(name for name, kind in KINDS.items() if kind.exact)
