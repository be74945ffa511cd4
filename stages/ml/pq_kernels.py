"""A Triton kernel for product-quantisation inner products on a GPU: decode codes to vectors tile by tile and
multiply them with the queries on the tensor cores, never writing decoded vectors to memory.

For a tile of BLOCK_N documents and BLOCK_M sub-quantisers the kernel loads the (BLOCK_N, BLOCK_M) codes, gathers each
code's centroid (DSUB values, one 16-byte load for DSUB = 8 in float16) from the flattened (M * KSUB, DSUB)
centroid table, which stays in L1/L2, and accumulates ``vectors @ queries`` over the sub-quantisers. The output is
the (queries, documents) score matrix in float32; top-k is left to torch. Imported only where triton is (CUDA).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_DOT = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _pq_scores_kernel(
    codes_ptr,
    table_ptr,
    queries_ptr,
    out_ptr,
    n_docs,
    n_queries,
    M: tl.constexpr,
    KSUB: tl.constexpr,
    DSUB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    GATHER_ROWS: tl.constexpr,
    IEEE: tl.constexpr,
):
    DIM: tl.constexpr = M * DSUB
    BLOCK_D: tl.constexpr = BLOCK_M * DSUB
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    queries = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < n_docs
    query_ok = queries < n_queries
    acc = tl.zeros((BLOCK_N, BLOCK_Q), dtype=tl.float32)
    for first in range(0, M, BLOCK_M):
        dims = first * DSUB + tl.arange(0, BLOCK_D)
        if GATHER_ROWS:
            # one code per (document, sub-quantiser); gather its whole centroid row at once
            subs = first + tl.arange(0, BLOCK_M)
            codes = tl.load(codes_ptr + rows[:, None] * M + subs[None, :], mask=row_ok[:, None], other=0)
            entries = subs[None, :] * KSUB + codes.to(tl.int32)
            offsets = entries[:, :, None] * DSUB + tl.arange(0, DSUB)[None, None, :]
            vectors = tl.reshape(tl.load(table_ptr + offsets), (BLOCK_N, BLOCK_D))
        else:
            # one gathered value per (document, dimension); the code byte is re-read DSUB times (cached)
            subs = dims // DSUB
            codes = tl.load(codes_ptr + rows[:, None] * M + subs[None, :], mask=row_ok[:, None], other=0)
            offsets = (subs[None, :] * KSUB + codes.to(tl.int32)) * DSUB + (dims % DSUB)[None, :]
            vectors = tl.load(table_ptr + offsets)
        block = tl.load(queries_ptr + queries[None, :] * DIM + dims[:, None], mask=query_ok[None, :], other=0.0)
        if IEEE:
            acc += tl.dot(vectors, block, input_precision="ieee")
        else:
            acc += tl.dot(vectors, block)
    out = out_ptr + queries[None, :].to(tl.int64) * n_docs + rows[:, None]
    tl.store(out, acc, mask=row_ok[:, None] & query_ok[None, :])


def block_m_for(m: int, dsub: int, preferred: int = 8) -> int | None:
    """The sub-quantisers per tile: a power of two dividing ``m`` with at least 16 dimensions; None if none fits."""
    if dsub & (dsub - 1):
        return None  # tl.arange needs a power-of-two width
    candidates = [b for b in (1, 2, 4, 8, 16, 32, 64) if m % b == 0 and b * dsub >= MIN_DOT]
    if not candidates:
        return None
    fitting = [b for b in candidates if b * dsub <= max(preferred * dsub, MIN_DOT)]
    return max(fitting) if fitting else min(candidates)


def supports(m: int, dsub: int) -> bool:
    return block_m_for(m, dsub) is not None


def pq_scores(
    codes: torch.Tensor,
    table: torch.Tensor,
    queries: torch.Tensor,
    ksub: int,
    out: torch.Tensor | None = None,
    block_n: int = 128,
    block_m: int | None = None,
    gather_rows: bool = True,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """(queries, documents) float32 inner products of ``queries`` (q, M * dsub) with the vectors the ``codes``
    (n, M; uint8 or int32) decode to in ``table`` (M * ksub, dsub); all on one CUDA device, queries in the table's
    dtype. float32 tables are multiplied exactly (no TF32)."""
    count, m = codes.shape
    dsub = table.shape[1]
    block_m = block_m or block_m_for(m, dsub)
    if block_m is None or m % block_m or block_m * dsub < MIN_DOT:
        raise ValueError(f"no Triton tiling for M={m}, dsub={dsub}, block_m={block_m}")
    queries = queries.to(table.dtype).contiguous()
    n_queries = queries.shape[0]
    if out is None:
        out = torch.empty((n_queries, count), dtype=torch.float32, device=codes.device)
    block_q = min(64, max(MIN_DOT, triton.next_power_of_2(n_queries)))
    grid = (triton.cdiv(count, block_n), triton.cdiv(n_queries, block_q))
    _pq_scores_kernel[grid](
        codes,
        table,
        queries,
        out,
        count,
        n_queries,
        M=m,
        KSUB=ksub,
        DSUB=dsub,
        BLOCK_N=block_n,
        BLOCK_M=block_m,
        BLOCK_Q=block_q,
        GATHER_ROWS=gather_rows,
        IEEE=table.dtype == torch.float32,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
