"""Stage `index`: an inner-product index over the corpus embeddings, from the encode shards.

Inputs: ``shard_0``, ``shard_1``, ... (`encode` artifacts, taken in the order of their number). The kind
(`stages.ml.index_kinds`) writes its files. flat (exact): the shards' embeddings.parquet files themselves, hard-linked
into the artifact as vectors/shard_<n>.parquet (copied, with a warning, where a link cannot be made), so the
embeddings are stored once; searchers read them from there. pq: index.faiss, trained first (optionally behind an OPQ
rotation: on up to ``train_size`` vectors sampled with a seeded choice), then the vectors are added batch by batch;
never all embeddings in memory. Every kind: doc_ids.parquet (row -> doc_id), kind.json (the kind, which readers go
by), summary.json (ntotal, dim, kind, bytes, seconds).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .core.cli import run_stage
from .core.errors import ConfigError, DataError
from .ml.index_kinds import KINDS, IndexKind, write_kind
from .core.artifacts import DOC_IDS_FILE, shard_files
from .core.tables import embedding_dim, embedding_ids, embedding_rows, iter_vectors, write_table

VERSION = 2
log = logging.getLogger("stages.index")

@dataclass
class IndexParams:
    kind: str
    """flat (exact inner product) or pq (product quantisation, lossy and smaller): `stages.ml.index_kinds`."""
    pq_m: int
    """PQ sub-vectors; must divide the embedding dimension."""
    pq_bits: int
    """Bits per PQ sub-vector code (2**bits centroids each, so at least that many training vectors)."""
    opq: bool
    """Learn an OPQ rotation before PQ."""
    train_size: int
    """Most vectors sampled to train PQ / OPQ."""
    seed: int
    """Seeds the training sample and faiss k-means."""


def check_params(params: IndexParams, dim: int) -> IndexKind:
    """The kind the params name, once it accepts them."""
    if params.kind not in KINDS:
        raise ConfigError(f"unknown index kind {params.kind!r}", fix=f"use one of {sorted(KINDS)}")
    kind = KINDS[params.kind]
    if kind.check is not None:
        kind.check(params, dim)
    return kind


def training_sample(files: list[Path], total: int, size: int, seed: int) -> np.ndarray:
    """Up to ``size`` vectors at seeded random rows, gathered in one streaming pass."""
    rows = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    sample, offset, taken = [], 0, 0
    for batch in iter_vectors(files, np.float32):
        stop = np.searchsorted(rows, offset + len(batch))
        sample.append(batch[rows[taken:stop] - offset])
        offset, taken = offset + len(batch), stop
    return np.ascontiguousarray(np.concatenate(sample) if sample else np.zeros((0, 0)), dtype=np.float32)


def build_index(params: IndexParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    files = shard_files(inputs)
    dim, total = embedding_dim(files), embedding_rows(files)
    kind = check_params(params, dim)
    doc_ids = embedding_ids(files)
    if len(set(doc_ids)) != len(doc_ids):
        raise DataError("the shards hold duplicate document ids", path=files[0].parent, fix="index each shard once")
    began = time.perf_counter()
    sample = lambda: training_sample(files, total, params.train_size, params.seed)  # noqa: E731 - PQ calls it
    train_vectors = kind.build(params, dim, files, Path(out_dir), sample)
    seconds = time.perf_counter() - began
    size = sum(p.stat().st_size for p in Path(out_dir).rglob("*") if p.is_file())  # the kind's files
    shared = sum(p.stat().st_size for p in Path(out_dir).rglob("*") if p.is_file() and p.stat().st_nlink > 1)
    write_table(pd.DataFrame({"doc_id": doc_ids}), Path(out_dir) / DOC_IDS_FILE)
    write_kind(out_dir, kind.name)
    log.info("%s index: %d vectors of dim %d, %.1f MB (%.1f MB of it linked), %.1f s", params.kind, total, dim,
             size / 1e6, shared / 1e6, seconds)  # fmt: skip
    return {
        "items": {"documents": total},
        "kind": params.kind,
        "ntotal": total,
        "dim": dim,
        "shards": len(files),
        "train_vectors": train_vectors,
        "bytes": size,
        "linked_bytes": shared,
        "build_seconds": round(seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    return run_stage("index", IndexParams, build_index, argv)


if __name__ == "__main__":
    sys.exit(main())
