"""A Triton kernel for BM25's term-at-a-time scatter on a GPU: each program adds one block of one (query, term)
pair's postings to the query's row of the score buffer, reading the index's document rows and weights once and
writing nothing else (the torch path materialises five int64/float32 temporaries a posting).

One launch per slot (the first term of every query of the batch, then the second, ...): within a launch every pair
belongs to another query and every posting of a pair to another document, so no two programs touch the same score,
and a plain load-add-store needs no atomics. Each score then sums its terms in the order scipy's product does, and
with fused multiply-add switched off the sums are the same float32 numbers as the CPU path's. Imported only where
triton is (CUDA, or Triton's CPU interpreter in the tests).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK = 1024  # postings a program


@triton.jit
def _scatter_kernel(
    scores_ptr,
    indices_ptr,
    data_ptr,
    block_pair_ptr,
    pair_first_block_ptr,
    pair_start_ptr,
    pair_end_ptr,
    pair_target_ptr,
    pair_count_ptr,
    block_base,
    WEIGHTED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    block = tl.program_id(0) + block_base
    pair = tl.load(block_pair_ptr + block)
    first = tl.load(pair_start_ptr + pair) + (block - tl.load(pair_first_block_ptr + pair)) * BLOCK
    postings = first + tl.arange(0, BLOCK)
    inside = postings < tl.load(pair_end_ptr + pair)
    documents = tl.load(indices_ptr + postings, mask=inside, other=0)
    weights = tl.load(data_ptr + postings, mask=inside, other=0.0)
    if WEIGHTED:
        weights = weights * tl.load(pair_count_ptr + pair)
    targets = tl.load(pair_target_ptr + pair) + documents.to(tl.int64)
    current = tl.load(scores_ptr + targets, mask=inside, other=0.0)
    tl.store(scores_ptr + targets, current + weights, mask=inside)


def scatter_pairs(
    flat_scores: torch.Tensor,
    indices: torch.Tensor,
    data: torch.Tensor,
    pairs,
    documents: int,
) -> None:
    """Add every pair's postings (a `stages.ml.sparse_search.Pairs`, in slot order) to ``flat_scores`` (the batch's
    (B, documents) buffer flattened): weight x the term's count in the query, slot by slot."""
    device = flat_scores.device
    blocks = -(-pairs.lengths // BLOCK)
    first_block = np.concatenate([[0], np.cumsum(blocks)])
    slot_bounds = slot_starts(pairs)
    on_device = {
        name: torch.from_numpy(np.ascontiguousarray(values)).to(device)
        for name, values in (
            ("first_block", first_block[:-1]), ("start", pairs.starts), ("end", pairs.starts + pairs.lengths),
            ("target", pairs.rows * documents), ("count", pairs.counts),
        )
    }  # fmt: skip
    total = int(first_block[-1])
    ids = torch.arange(len(blocks), device=device, dtype=torch.int32)
    block_pair = torch.repeat_interleave(ids, torch.from_numpy(blocks).to(device), output_size=total)
    weighted = bool((pairs.counts != 1).any())
    for begin, end in zip(slot_bounds[:-1], slot_bounds[1:]):
        launch = int(first_block[end] - first_block[begin])
        if launch == 0:
            continue
        _scatter_kernel[(launch,)](
            flat_scores, indices, data, block_pair, on_device["first_block"], on_device["start"], on_device["end"],
            on_device["target"], on_device["count"], int(first_block[begin]),
            WEIGHTED=weighted, BLOCK=BLOCK, num_warps=4, enable_fp_fusion=False,
        )  # fmt: skip


def slot_starts(pairs) -> list[int]:
    """Pair bounds of the slots: pairs are in slot order, and a slot starts where a query's row repeats or drops."""
    rows = pairs.rows
    new_slot = np.flatnonzero(rows[1:] <= rows[:-1]) + 1
    return [0, *new_slot.tolist(), len(rows)]
