"""STAR's loss (Zhan et al., SIGIR 2021) over one batch's (queries, documents) scores, and its listwise alternative.

Terms, over (query, negative) pairs; documents judged relevant to the query never count as its negatives
(`pair_masks`): hard, the query with its own negatives; random, the query with every other document of the batch
(in-batch sharing: STAR's random negatives at no extra encoding). The losses (`LOSSES`): ``pairwise``, the paper
code's RankNet ``softplus(s_neg - s_pos)`` per pair; ``softmax``, cross-entropy of the positive against the query's
negatives (sentence-transformers' MultipleNegativesRankingLoss). What a loss averages over is selected on the host
(`loss_index`), so the loss never reads a device value back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F


def pair_masks(
    judged: list[set[str]], doc_ids: list[str], per_query: int, hard_term: bool, random_term: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (queries, documents) masks of the hard and random pairs for the batch layout of `Batch.doc_ids`.

    Column i < B is query i's positive; columns B + i*k ... B + i*k + k - 1 are query i's negatives. Hard pairs: a query
    and its own negatives; random pairs: a query and every other column except its positive. Documents judged relevant
    to the query (its positives, wherever they appear in the batch) are in neither.
    """
    count = len(judged)
    owner = np.concatenate([np.arange(count), np.repeat(np.arange(count), per_query)])
    if len(owner) != len(doc_ids):
        raise ValueError(f"{len(doc_ids)} documents for {count} queries with {per_query} negatives each")
    own = owner[None, :] == np.arange(count)[:, None]
    negative = (np.arange(len(doc_ids)) >= count)[None, :]
    relevant = judged_matrix(judged, doc_ids)
    hard = own & negative & ~relevant & hard_term
    random = ~own & ~relevant & random_term
    return hard, random


def judged_matrix(judged: list[set[str]], doc_ids: list[str]) -> np.ndarray:
    """Boolean (queries, documents): whether each document of the batch is among each query's ``judged`` positives.

    The batch's distinct documents get integer codes; only the judged positives found among them are looked up (from
    the smaller side), so the cost is about documents + judged positives, not queries x documents."""
    code: dict[str, int] = {}
    columns = np.fromiter((code.setdefault(doc, len(code)) for doc in doc_ids), dtype=np.intp, count=len(doc_ids))
    rows: list[int] = []
    found: list[int] = []
    for row, positives in enumerate(judged):
        if len(positives) <= len(code):
            hits = [code[doc] for doc in positives if doc in code]
        else:
            hits = [column for doc, column in code.items() if doc in positives]
        rows += [row] * len(hits)
        found += hits
    by_code = np.zeros((len(judged), len(code)), dtype=bool)
    by_code[np.array(rows, dtype=np.intp), np.array(found, dtype=np.intp)] = True
    return by_code[:, columns]


def _share(values: torch.Tensor, count: int) -> torch.Tensor:
    """Sum over ``count`` (a mean when ``values`` are all of them); 0 (still part of the graph) when there are none."""
    return values.sum() / max(1, count)


def _listwise(scores: torch.Tensor, positive: torch.Tensor, mask: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Per query with any negative in ``mask`` (their rows: ``queries``): -log softmax of the positive among the
    positive and those negatives."""
    negatives = scores.masked_fill(~mask, float("-inf"))
    per_query = torch.logsumexp(torch.cat([positive, negatives], dim=1), dim=1) - positive.squeeze(1)
    return per_query[queries]


def map_tensors(value: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` (a tensor, a tuple / dict of them or a dataclass of those) with ``function`` applied to its tensors."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, tuple):
        return tuple(map_tensors(item, function) for item in value)
    if isinstance(value, dict):
        return {key: map_tensors(item, function) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: map_tensors(getattr(value, f.name), function) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value


@dataclass
class LossIndex:
    """What `star_loss` selects, worked out on the host from the numpy masks (`loss_index`), so that the loss never
    reads a device value back: per term, this rank's (row, column) pairs (pairwise) or its rows with a negative
    (softmax), as int64 tensors in row-major order, and the whole batch's counts of pairs (or of queries)."""

    counts: dict[str, int]
    """hard, random, combined: pairs (pairwise) or queries with a negative (softmax), over the whole batch."""
    selections: dict[str, tuple[torch.Tensor, ...]]
    """hard, random (and combined for softmax): (rows, columns) of the pairs, or (rows,) of the queries."""

    def to(self, device: torch.device, non_blocking: bool = False) -> LossIndex:
        return map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> LossIndex:
        return map_tensors(self, torch.Tensor.pin_memory)


Tensor = torch.Tensor


Terms = tuple[Tensor, Tensor, Tensor]


def _positions(*found: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(f, dtype=np.int64)) for f in found)


def _pairs_index(hard: np.ndarray, random: np.ndarray, rows: slice) -> LossIndex:
    """Every (query, negative) pair is an item: the rank's pairs, the batch's counts."""
    counts = {"hard": int(hard.sum()), "random": int(random.sum())}
    counts["combined"] = counts["hard"] + counts["random"]  # the masks are disjoint
    pairs = {name: _positions(*np.nonzero(mask[rows])) for name, mask in (("hard", hard), ("random", random))}
    return LossIndex(counts, pairs)


def _pairwise_terms(scores: Tensor, positive: Tensor, hard_rows: Tensor, random_rows: Tensor, chosen: dict) -> Terms:
    pairs = F.softplus(scores - positive)
    hard, random = pairs[chosen["hard"]], pairs[chosen["random"]]
    return hard, random, torch.cat([hard, random])


def _queries_index(hard: np.ndarray, random: np.ndarray, rows: slice) -> LossIndex:
    """Every query with a negative in the term is an item: the rank's queries, the batch's counts."""
    masks = {"hard": hard, "random": random, "combined": hard | random}
    counts = {name: int(mask.any(axis=1).sum()) for name, mask in masks.items()}
    queries = {name: _positions(np.flatnonzero(mask[rows].any(axis=1))) for name, mask in masks.items()}
    return LossIndex(counts, queries)


def _softmax_terms(scores: Tensor, positive: Tensor, hard_rows: Tensor, random_rows: Tensor, chosen: dict) -> Terms:
    hard = _listwise(scores, positive, hard_rows, *chosen["hard"])
    random = _listwise(scores, positive, random_rows, *chosen["random"])
    return hard, random, _listwise(scores, positive, hard_rows | random_rows, *chosen["combined"])


@dataclass(frozen=True)
class StarLoss:
    """One STAR loss (the ``loss`` setting): the items it averages over, found on the host, and their losses."""

    index: Callable[[np.ndarray, np.ndarray, slice], LossIndex]
    """(hard mask, random mask, the rank's query rows) -> `LossIndex`."""
    terms: Callable[..., Terms]
    """(scores, positive scores (B, 1), the rank's rows of the hard and random masks, `LossIndex.selections`) ->
    the per-item losses of the hard, random and combined terms."""


LOSSES: dict[str, StarLoss] = {
    # softplus(s_neg - s_pos) per (query, negative) pair: the paper's RankNet loss
    "pairwise": StarLoss(_pairs_index, _pairwise_terms),
    # cross-entropy of the positive against the query's negatives (MultipleNegativesRankingLoss)
    "softmax": StarLoss(_queries_index, _softmax_terms),
}


def loss_index(hard: np.ndarray, random: np.ndarray, rows: slice = slice(None), loss: str = "pairwise") -> LossIndex:
    """`LossIndex` of the (queries, documents) boolean masks of `pair_masks` for the rank's query ``rows``."""
    return LOSSES[loss].index(hard, random, rows)


def star_loss(
    scores: torch.Tensor,
    positive_column: torch.Tensor,
    hard_mask: torch.Tensor,
    random_mask: torch.Tensor,
    random_weight: float = -1.0,
    loss: str = "pairwise",
    rows: slice = slice(None),
    index: LossIndex | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of (queries, documents) ``scores`` and the per-term values to log, as detached 0-dim tensors
    (nan for an empty term).

    ``positive_column[i]`` is the column of query i's positive. Pairwise: each (query, negative) pair costs
    softplus(s_neg - s_pos); ``random_weight < 0`` takes the mean over all pairs of both terms, otherwise
    mean(hard) + random_weight * mean(random). Softmax: the same with per-query cross-entropy in place of pairs.

    ``scores`` may hold only ``rows`` of the batch's queries (one rank's; the masks still cover the whole batch):
    the loss and the extras are then their share; the shares of all rows sum to the whole batch's values.

    ``index``: `loss_index` of the masks, made on the host and already on the device of ``scores``; then nothing is
    read back from the device. Without it, it is made here from the masks (which reads them back: a sync on a GPU).
    """
    if index is None:
        index = loss_index(hard_mask.cpu().numpy(), random_mask.cpu().numpy(), rows, loss).to(scores.device)
    counts, chosen = index.counts, index.selections
    positive = scores.gather(1, positive_column[:, None])
    hard, random, combined = LOSSES[loss].terms(scores, positive, hard_mask[rows], random_mask[rows], chosen)
    if random_weight < 0:
        total = _share(combined, counts["combined"])
    else:
        total = _share(hard, counts["hard"]) + random_weight * _share(random, counts["random"])
    extras = {
        f"{term}_loss": _share(values.detach(), counts[term]) if counts[term] else scores.new_full((), float("nan"))
        for term, values in (("hard", hard), ("random", random))
    }
    return total, extras
