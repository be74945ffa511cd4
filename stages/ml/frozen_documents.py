"""The fixed document side of a query-encoder trainer (ADORE): the index searched in torch, and the vectors the
loss scores with.

The index artifact records its kind (`stages.ml.index_kinds`), whose torch searcher searches and scores. PQ indexes
(lossy kinds; ``pq_scoring``): the search always runs over the codes; the loss scores with ``reconstructed`` vectors
(the decoded centroids, with the query through the OPQ rotation: exactly the scores inference ranks by) or
``uncompressed`` ones (the original embeddings from the ``shard_*`` inputs, what the paper's code did).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from ..core.artifacts import SHARD_INPUT, shard_files
from ..core.errors import ArtifactError, ConfigError

log = logging.getLogger("stages.ml.frozen_documents")


PQ_SCORING = ("reconstructed", "uncompressed")


class FrozenDocuments:
    """The fixed document side: the searcher over the index and the vectors the loss scores with."""

    def __init__(self, searcher: Any, scoring: str, uncompressed: torch.Tensor | None = None):
        self.searcher = searcher
        """The index kind's torch searcher (`stages.ml.index_kinds`): its ``scores`` are what the search ranks by."""
        self.scoring = scoring
        """For the log: flat (the index's vectors), reconstructed (decoded PQ) or uncompressed (the encode shards)."""
        self.uncompressed = uncompressed

    @property
    def ntotal(self) -> int:
        return self.searcher.ntotal

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) int64 rows of the top-k documents; no gradient."""
        with torch.no_grad():
            return self.searcher.topk(queries.detach(), k)[1]

    def scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, n) float32 scores of query b with the documents ``rows[b]``: the searcher's, or inner products with
        the uncompressed embeddings; gradient flows to the queries."""
        if self.uncompressed is None:
            return self.searcher.scores(queries, rows)
        return torch.einsum("bd,bnd->bn", queries.float(), self.uncompressed[rows].float())


def uncompressed_embeddings(inputs: Mapping[str, Path], doc_ids: list[str], device: torch.device) -> torch.Tensor:
    """The shard inputs' embeddings in index row order, on ``device`` (float16 on CUDA, float32 elsewhere)."""
    from ..core.tables import embedding_dim, iter_embeddings

    files = shard_files(inputs)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    matrix = torch.empty((len(doc_ids), embedding_dim(files)), dtype=dtype, device=device)
    row_of: dict[str, int] | None = None
    offset, filled = 0, 0
    for ids, batch in iter_embeddings(files):
        if row_of is None and ids == doc_ids[offset : offset + len(ids)]:
            rows = torch.arange(offset, offset + len(ids))  # the index was built from these shards in this order
        else:
            row_of = row_of or {doc: row for row, doc in enumerate(doc_ids)}
            rows = torch.tensor([row_of.get(doc, -1) for doc in ids])
            rows = rows[rows >= 0]
            batch = batch[[doc in row_of for doc in ids]]
        matrix[rows.to(device)] = torch.tensor(batch, dtype=dtype).to(device)  # a copy: arrow buffers are read-only
        offset, filled = offset + len(ids), filled + len(rows)
    if filled != len(doc_ids):
        raise ArtifactError(
            f"the shard inputs hold embeddings of {filled} of the index's {len(doc_ids)} documents",
            path=files[0].parent,
            fix="pass the encode shards the index was built from",
        )
    return matrix


def frozen_documents(
    pq_scoring: str, inputs: Mapping[str, Path], device: torch.device
) -> tuple[FrozenDocuments, list[str]]:
    """FrozenDocuments over the index input on ``device`` (its recorded kind's torch searcher), and its doc ids."""
    from .index_kinds import open_torch_searcher

    kind, searcher, doc_ids = open_torch_searcher(inputs["index"], device)
    if searcher is None:
        raise ConfigError(
            f"ADORE searches its index in torch, and a {kind.name} index has no torch searcher",
            path=inputs["index"],
            fix="train on an index of another kind",
        )
    scoring = pq_scoring if kind.lossy else "flat"
    shards = sorted(name for name in inputs if SHARD_INPUT.fullmatch(name))
    if not kind.scores_with_shards(pq_scoring):
        if shards:
            log.info("%s index, %s scoring: the shard inputs are not needed and ignored", kind.name, scoring)
        return FrozenDocuments(searcher, scoring), doc_ids
    if not shards:
        raise ConfigError(
            "pq_scoring 'uncompressed' scores with the original document embeddings, but no shard inputs were given",
            path=inputs["index"],
            fix="pass the index's encode artifacts as inputs shard_0 .. shard_<n-1>, or use pq_scoring 'reconstructed'",
        )
    return FrozenDocuments(searcher, "uncompressed", uncompressed_embeddings(inputs, doc_ids, device)), doc_ids
