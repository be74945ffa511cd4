"""Index kinds (the ``index.kind`` setting): what the `index` stage writes for each one (flat: the encode shards'
embeddings files themselves, hard-linked as vectors/shard_<n>.parquet, no second copy; pq: index.faiss), how faiss
opens it, how torch searches it (`retrieve` on a GPU without faiss-gpu; ADORE, whose loss scores with that searcher),
and whether ADORE may score with the uncompressed embeddings instead. The index artifact records its kind
(kind.json); readers look the kind up here and never guess it from a faiss class. A new kind is one entry of `KINDS`
(and the schema's enum) plus its test.

The plan reads `KINDS`, so faiss, torch and the searchers are imported where they are used, not at the top.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.artifacts import INDEX_FILE, KIND_FILE, SUMMARY, vector_file, vector_files
from ..core.errors import ArtifactError, ConfigError

log = logging.getLogger("stages.ml.index_kinds")

BACKENDS = ("auto", "faiss", "faiss-gpu", "torch")


@dataclass(frozen=True)
class IndexKind:
    name: str
    build: Callable[[Any, int, list[Path], Path, Callable[[], Any]], int]
    """(IndexParams, dim, the encode shards' embeddings files in row order, the artifact folder being written, a
    function giving the training sample) -> the number of vectors it trained on; writes the kind's files."""
    open: Callable[[Path], Any]
    """(index artifact) -> the faiss index (CPU) the faiss backends search, row n = doc_ids.parquet's row n."""
    torch_searcher: Callable[[Path, list[str], Any], Any] | None
    """(index artifact, doc ids, device or None) -> a `stages.ml.search` torch searcher (``topk``, and ``scores``:
    what ADORE's loss scores with); None: searched by faiss only, and ADORE cannot train on it."""
    lossy: bool = False
    """It stores approximations of the embeddings, so ADORE may score with the encode shards instead."""
    check: Callable[[Any, int], None] | None = None
    """(IndexParams, dim): refuses params this kind cannot build, before any work."""
    exact: bool = False
    """Its search is exhaustive over the exact embeddings: the kind negatives are mined with."""

    def scores_with_shards(self, pq_scoring: str) -> bool:
        """Whether ADORE (its ``pq_scoring``) reads the encode shards, inputs ``shard_*``, on this kind."""
        return self.lossy and pq_scoring == "uncompressed"


# --- flat: exact inner product over the encode shards' own files ----------------------------------------------------


def build_flat(params: Any, dim: int, files: list[Path], out_dir: Path, sample: Callable[[], Any]) -> int:
    """The shards' embeddings files themselves, hard-linked into the artifact (`vector_file`): no second copy."""
    from ..core.store import link_or_copy

    for number, file in enumerate(files):
        link_or_copy(file, Path(out_dir) / vector_file(number))
    return 0


def open_flat(artifact_dir: Path) -> Any:
    from .search import flat_faiss_index

    return flat_faiss_index(vector_files(artifact_dir))


def flat_torch_searcher(artifact_dir: Path, doc_ids: list[str], device: Any) -> Any:
    from .search import FlatTorchSearcher

    return FlatTorchSearcher.from_files(vector_files(artifact_dir), device=device, doc_ids=doc_ids)


# --- pq: product quantisation (IndexPQ, optionally behind an OPQ rotation) -----------------------------------------


def check_pq(params: Any, dim: int) -> None:
    if params.pq_m < 1 or dim % params.pq_m:
        divisors = [m for m in range(1, dim + 1) if dim % m == 0]
        raise ConfigError(
            f"pq_m={params.pq_m} does not divide the embedding dimension {dim}", fix=f"choose pq_m among {divisors}"
        )
    if not 1 <= params.pq_bits <= 16:
        raise ConfigError(f"pq_bits={params.pq_bits}", fix="choose pq_bits between 1 and 16 (8 is usual)")


def trained_pq(params: Any, dim: int, sample: Callable[[], Any]) -> tuple[Any, int]:
    """An empty IndexPQ (behind OPQ with ``params.opq``) trained on the sample, and the sample's size."""
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


def build_pq(params: Any, dim: int, files: list[Path], out_dir: Path, sample: Callable[[], Any]) -> int:
    """index.faiss: the trained index with every vector added, streamed a batch at a time."""
    import faiss
    import numpy as np
    from tqdm.auto import tqdm

    from ..core.tables import embedding_rows, iter_vectors

    index, trained = trained_pq(params, dim, sample)
    with tqdm(total=embedding_rows(files), desc="index pq", unit="vec") as bar:
        for batch in iter_vectors(files, np.float32):
            index.add(np.ascontiguousarray(batch))
            bar.update(len(batch))
    faiss.write_index(index, str(Path(out_dir) / INDEX_FILE))
    return trained


def open_pq(artifact_dir: Path) -> Any:
    from .search import read_faiss_index

    return read_faiss_index(artifact_dir)


def pq_torch_searcher(artifact_dir: Path, doc_ids: list[str], device: Any) -> Any:
    from .search import PQTorchSearcher

    return PQTorchSearcher.from_faiss(open_pq(artifact_dir), doc_ids=doc_ids, device=device)


KINDS: dict[str, IndexKind] = {
    kind.name: kind
    for kind in (
        IndexKind("flat", build_flat, open_flat, flat_torch_searcher, exact=True),
        IndexKind("pq", build_pq, open_pq, pq_torch_searcher, lossy=True, check=check_pq),
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


def checked_rows(searcher: Any, doc_ids: list[str], artifact_dir: Path) -> Any:
    """The searcher (or faiss index), once it holds a row for each document id."""
    if searcher.ntotal != len(doc_ids):
        raise ArtifactError(f"index holds {searcher.ntotal} vectors but {len(doc_ids)} doc ids", path=artifact_dir)
    return searcher


def open_index(artifact_dir: Path) -> tuple[IndexKind, Any, list[str]]:
    """(its recorded kind, its faiss index on the CPU, the document id of each row) of an index artifact."""
    from .search import read_doc_ids

    doc_ids = read_doc_ids(artifact_dir)
    kind = recorded_kind(artifact_dir)
    return kind, checked_rows(kind.open(artifact_dir), doc_ids, artifact_dir), doc_ids


def open_torch_searcher(artifact_dir: Path, device: Any) -> tuple[IndexKind, Any | None, list[str]]:
    """(its recorded kind, the kind's torch searcher on ``device`` (None for a kind without one), the document id of
    each row) of an index artifact; no faiss index is made."""
    from .search import read_doc_ids

    doc_ids = read_doc_ids(artifact_dir)
    kind = recorded_kind(artifact_dir)
    if kind.torch_searcher is None:
        return kind, None, doc_ids
    return kind, checked_rows(kind.torch_searcher(artifact_dir, doc_ids, device), doc_ids, artifact_dir), doc_ids


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
    kind = recorded_kind(index_artifact)
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
        searcher = open_torch_searcher(index_artifact, None)[1]
        log.info("search: torch %s searcher over %d vectors", kind.name, searcher.ntotal)
        return searcher
    if backend == "faiss-gpu" and not faiss_has_gpu():
        raise ConfigError("faiss has no GPU support here", fix="use backend 'auto', 'faiss' or 'torch'")
    _, index, doc_ids = open_index(index_artifact)
    if backend == "faiss-gpu":
        resources = faiss.StandardGpuResources()
        log.info("search: faiss GPU over %d vectors", index.ntotal)
        return FaissSearcher(faiss.index_cpu_to_gpu(resources, 0, index), doc_ids, resources)
    log.info("search: faiss CPU over %d vectors", index.ntotal)
    return FaissSearcher(index, doc_ids)


def exact_kind() -> str:
    """The kind that searches exhaustively over the exact embeddings (mining negatives needs no approximation)."""
    return next(name for name, kind in KINDS.items() if kind.exact)
