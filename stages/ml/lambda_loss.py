"""ADORE's loss (Zhan et al., SIGIR 2021): RankNet over (positive, negative) pairs of a query's current ranking,
each pair weighted by |delta metric|, the change of the query's metric if the two swapped places (LambdaLoss).

The ranking is the search order (ranks 1..top_k); negatives are the retrieved documents not judged relevant. A judged
positive outside the top-k has a rank beyond top_k; since ``metric_cutoff <= top_k``, its own gain is 0 in either
metric, so where exactly beyond top_k it sits never matters: swapping it with the negative at rank r is worth what the
positive would gain by entering at r (and what the query's other positives lose, for MRR).

Metrics (`METRICS`, cut at ``cutoff``; the paper's code: MRR with cut 200 for passages):

- ``mrr``: the reciprocal rank of the first positive, 0 beyond the cutoff. With f the first positive's rank and f2 the
  second's, swapping positive p with the negative at rank r changes it by 1/r - 1/f when r < f (p becomes first),
  by 1/f - 1/min(r, f2) when p is the first positive and r > f, else not at all. With one positive per query
  (nearly all of MS MARCO) this is |1/r_p - 1/r|, the weight of the paper's code; with several positives that code
  sums the reciprocal ranks of all of them, while this is MRR's own delta.
- ``ndcg``: nDCG with linear gain (the relevance grade, as trec_eval) and discount 1/log2(1 + rank), 0 beyond the
  cutoff, over the ideal DCG of the query's judged positives: |delta| = gain_p * |disc(r_p) - disc(r)| / IDCG.

Pairs of two positives are not used. Normalisation as in the paper's code: per query, the sum of the weighted pair
losses over the number of (positive, negative) pairs, then the mean over the batch's queries. The weights are not
normalised away, so a query whose ranking is already good, with small deltas, contributes less: the point of
LambdaLoss. Everything is computed on the tensors' device, for a whole batch at once, without reading back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


METRICS = ("mrr", "ndcg")


def weight_dtype(device: torch.device) -> torch.dtype:
    """The float type of the gains, ranks and weights: float64 on the CPU (as numpy computed them), float32 elsewhere
    (the weights are float32 in the loss either way; ranks up to 2**24 are exact in float32)."""
    return torch.float64 if device.type == "cpu" else torch.float32


@dataclass
class Pairs:
    """One batch's retrieval as tensors on the training device: the retrieved rows and the positives with their
    ranks."""

    retrieved: torch.Tensor
    """(B, k) int64 index rows in search order (rank = column + 1)."""
    negative: torch.Tensor
    """(B, k) bool: whether the retrieved document is not judged relevant."""
    positive_rows: torch.Tensor
    """(B, P) int64 index rows of the judged positives (padded with 0)."""
    positive_gains: torch.Tensor
    """(B, P) float: their relevance grades (0 where padded)."""
    positive_ranks: torch.Tensor
    """(B, P) float (the gains' type): their ranks: column + 1 of the retrieved list, else top_k + 1 + their
    position among the query's positives (padding: inf)."""
    valid: torch.Tensor
    """(B, P) bool: which positive slots are real."""


def rank_pairs(
    retrieved: torch.Tensor, positive_rows: torch.Tensor, positive_gains: torch.Tensor, valid: torch.Tensor
) -> Pairs:
    """The ranks of each query's positives in its retrieved list (beyond it: top_k + 1 + their position among the
    query's positives), all queries at once on the tensors' device: (B, k) retrieved rows, (B, P) padded positives."""
    k = retrieved.shape[1]
    hit = (retrieved[:, :, None] == positive_rows[:, None, :]) & valid[:, None, :]  # (B, k, P)
    columns = torch.arange(k, device=retrieved.device)[None, :, None]
    first_hit = torch.where(hit, columns, k).amin(dim=1)  # (B, P): k where not retrieved
    position = torch.arange(positive_rows.shape[1], device=retrieved.device)[None, :]
    ranks = torch.where(first_hit < k, first_hit + 1, k + 1 + position).to(positive_gains.dtype)
    ranks = torch.where(valid, ranks, torch.inf)
    return Pairs(retrieved, ~hit.any(dim=2), positive_rows, positive_gains, ranks, valid)


def swap_weights(pairs: Pairs, metric: str, cutoff: int) -> torch.Tensor:
    """(B, P, k), in the ranks' float type: |delta metric| of swapping positive p with retrieved document n; 0 unless
    (p, n) is a real (positive, negative) pair. See the module docstring for the formulas."""
    ranks = pairs.positive_ranks
    k = pairs.retrieved.shape[1]
    rank_n = torch.arange(1, k + 1, dtype=ranks.dtype, device=ranks.device)[None, None, :]
    rank_p = ranks[:, :, None]
    if metric == "mrr":
        def reciprocal(rank: torch.Tensor) -> torch.Tensor:
            return torch.where(rank <= cutoff, 1.0 / rank, 0.0)

        ordered = torch.sort(ranks, dim=1).values
        first = ordered[:, :1, None]
        second = ordered[:, 1:2, None] if ordered.shape[1] > 1 else torch.full_like(first, torch.inf)
        weights = torch.where(
            rank_n < first,
            reciprocal(rank_n) - reciprocal(first),
            torch.where(rank_p == first, reciprocal(first) - reciprocal(torch.minimum(rank_n, second)), 0.0),
        )
    else:
        def discount(rank: torch.Tensor) -> torch.Tensor:
            return torch.where(rank <= cutoff, 1.0 / torch.log2(rank + 1.0), 0.0)

        ideal_gains = torch.sort(pairs.positive_gains, dim=1, descending=True).values[:, :cutoff]
        positions = torch.arange(1, ideal_gains.shape[1] + 1, dtype=ranks.dtype, device=ranks.device)
        ideal = (ideal_gains * discount(positions)).sum(dim=1)
        gain = pairs.positive_gains[:, :, None]
        weights = gain * torch.abs(discount(rank_p) - discount(rank_n)) / ideal.clamp(min=1e-12)[:, None, None]
    real = pairs.valid[:, :, None] & pairs.negative[:, None, :]
    return torch.where(real, torch.abs(weights), 0.0)


def lambda_loss(
    retrieved_scores: torch.Tensor,
    positive_scores: torch.Tensor,
    weights: torch.Tensor,
    real: torch.Tensor,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Mean over queries of (sum over real pairs of weight * softplus(s_neg - s_pos)) / (real pairs of the query).

    ``retrieved_scores`` (B, k), ``positive_scores`` (B, P), ``weights`` and ``real`` (B, P, k). With ``batch_size``
    (the global batch, of which these B queries are one rank's part), the sum over the B queries / ``batch_size``."""
    pair_losses = F.softplus(retrieved_scores[:, None, :] - positive_scores[:, :, None])
    per_query = (weights * pair_losses * real).sum(dim=(1, 2)) / real.sum(dim=(1, 2)).clamp(min=1)
    return per_query.mean() if batch_size is None else per_query.sum() / batch_size
