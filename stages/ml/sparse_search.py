"""BM25 retrieval in torch, for a GPU: the `bm25` stage's search done term at a time on the device.

The index's (terms x documents) CSR weights stay on the device once (int32 document rows, float32 weights; the
row pointers stay on the host, where each batch's postings are located). A batch of B queries gets a dense
(B, documents) float32 score buffer; every (query, term) pair of the batch scatters its term's postings (weight x the
term's count in the query) into the query's row with ``index_add_``, the positions of the postings coming from
repeat_interleave / cumsum arithmetic over the pairs (no loop over terms or queries). The pairs are scattered slot by
slot (the first term of every query, then the second, ...): no two postings of one call add to the same score, so
each score sums its terms in the order scipy's sparse product does, and the scores are the same float32 numbers as
the CPU path's (`stages.bm25.search_batch`), on any device, run after run (no race between atomic adds). bm25l and
bm25+ then add each query's score for its absent terms to every document the product gave a non-zero score, as the
CPU path does. ``topk`` keeps the k best; where the k-th score ties with documents left out, the lowest document rows
are kept, and equal scores rank the lower row first, as on the CPU; documents without a positive score are left out
(-1, score 0).

On CUDA with triton installed the scatter is one fused kernel a slot (`stages.ml.bm25_kernels`: postings read once,
no temporaries, the same sums); the torch path above is the fallback and the CPU reference.

B is sized to the card: ``BYTES_PER_SCORE`` bytes a score (the buffer's 4, its temporaries) out of
``MEMORY_FRACTION`` of the free device memory (`HOST_MEMORY` on the CPU), after ``GATHER_POSTINGS`` postings'
temporaries (``BYTES_PER_POSTING`` each: one scatter call gathers at most about that many), at most ``MAX_BATCH``
queries and 2^31 - 1 scores (32-bit index arithmetic in the kernels). At 8.8M documents a query's row takes 35 MB.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    import scipy.sparse

log = logging.getLogger("stages.ml.sparse_search")
MAX_BATCH = 1024
MAX_SCORES = 2**31 - 1
GATHER_POSTINGS = 1 << 24
BYTES_PER_POSTING = 48  # pair id, position, document row, target, weight: int64s and float32s in flight
BYTES_PER_SCORE = 8  # the buffer's float32, the bool mask of bm25l/bm25+, the tie-breaking's share (a quarter batch)
MEMORY_FRACTION = 0.8
HOST_MEMORY = 1 << 30  # the score buffer's budget on the CPU device


def batch_size(documents: int, device: torch.device, limit: int = MAX_BATCH, gather: int = GATHER_POSTINGS) -> int:
    """Queries a batch: as many (documents,) score rows as fit the free memory, within ``limit`` and 2^31 - 1 scores."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * MEMORY_FRACTION - gather * BYTES_PER_POSTING
    else:
        budget = HOST_MEMORY
    documents = max(1, documents)
    fits = int(budget // (documents * BYTES_PER_SCORE))
    if fits < 1:
        log.warning("a query's %d scores (%d bytes each) exceed the memory budget: batches of one", documents,
                    BYTES_PER_SCORE)
    return max(1, min(limit, fits, MAX_SCORES // documents))


class Pairs(NamedTuple):
    """A batch's (query, term) pairs, in slot order (a term's place in its query), and where their postings lie."""

    rows: np.ndarray
    """The query's row in the batch."""
    counts: np.ndarray
    """The term's count in the query (float32)."""
    starts: np.ndarray
    """The term's first posting in the index."""
    lengths: np.ndarray
    """Its postings."""
    offsets: np.ndarray
    """(pairs + 1,): where each pair's postings begin among the batch's, in this order."""
    bounds: np.ndarray
    """Scatter calls: pairs bounds[i]:bounds[i + 1] hold one slot (each query once), ~``gather`` postings at most."""


def batch_pairs(queries: scipy.sparse.csr_matrix, indptr: np.ndarray, gather: int) -> Pairs:
    """The pairs of a (queries x terms) count matrix, its terms in order within a row (`stages.bm25.query_matrix`)."""
    per_row = np.diff(queries.indptr)
    rows = np.repeat(np.arange(len(per_row), dtype=np.int64), per_row)
    slots = np.arange(len(rows)) - np.repeat(queries.indptr[:-1], per_row)
    order = np.argsort(slots, kind="stable")
    rows, slots, terms = rows[order], slots[order], queries.indices[order]
    starts = indptr[terms]
    lengths = indptr[terms + 1] - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    chunks = offsets[:-1] // max(1, gather)
    change = np.flatnonzero((slots[1:] != slots[:-1]) | (chunks[1:] != chunks[:-1])) + 1
    bounds = np.concatenate([[0], change, [len(rows)]]) if len(rows) else np.zeros(1, dtype=np.int64)
    return Pairs(rows, queries.data[order].astype(np.float32), starts, lengths, offsets, bounds)


class SparseTorchSearcher:
    """BM25 top-k over a `bm25_index` artifact's weights (`stages.ml.lexical.Bm25Index`), held on ``device``."""

    def __init__(
        self,
        term_docs: scipy.sparse.csr_matrix,
        nonoccurrence: np.ndarray | None = None,
        device: str | torch.device | None = None,
        max_batch: int = MAX_BATCH,
        gather: int = GATHER_POSTINGS,
        kernel: str = "auto",
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.kernel = scatter_kernel(kernel, self.device)
        self.terms, self.documents = (int(size) for size in term_docs.shape)
        self.indptr = np.asarray(term_docs.indptr, dtype=np.int64)
        self.indices = torch.from_numpy(np.asarray(term_docs.indices, dtype=np.int32)).to(self.device)
        self.data = torch.from_numpy(np.asarray(term_docs.data, dtype=np.float32)).to(self.device)
        self.nonoccurrence = nonoccurrence
        self.gather = gather
        self.batch = batch_size(self.documents, self.device, max_batch, gather)
        log.info("bm25 on %s (%s scatter): %d postings resident, batches of %d queries", self.device, self.kernel,
                 len(self.data), self.batch)

    @torch.inference_mode()
    def search(self, queries: scipy.sparse.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(documents, scores) for a (queries x terms) count matrix (`stages.bm25.query_matrix`): (queries, k) arrays
        of document rows (-1 where fewer than k documents match) and float32 scores, as `stages.bm25.search` gives."""
        count = queries.shape[0]
        docs = np.full((count, k), -1, dtype=np.int32)
        scores = np.zeros((count, k), dtype=np.float32)
        kept = min(k, self.documents)
        if count == 0 or kept == 0:
            return docs, scores
        extra = None if self.nonoccurrence is None else (queries @ self.nonoccurrence).astype(np.float32)
        buffer = torch.empty((min(self.batch, count), self.documents), dtype=torch.float32, device=self.device)
        starts = range(0, count, self.batch)
        report = max(1, len(starts) // 10)  # a log line every tenth of the queries
        for number, start in enumerate(starts, 1):
            rows = slice(start, min(count, start + self.batch))
            view = buffer[: rows.stop - rows.start].zero_()
            self.scatter(view, queries[rows])
            if extra is not None:
                add_nonoccurrence(view, torch.from_numpy(extra[rows]).to(self.device))
            docs[rows, :kept], scores[rows, :kept] = top_k(view, kept, max(1, self.batch // 4))
            if number % report == 0 and number < len(starts):
                log.info("bm25 on %s: %d of %d queries", self.device, rows.stop, count)
        return docs, scores

    def scatter(self, scores: torch.Tensor, queries: scipy.sparse.csr_matrix) -> None:
        """Add each (query, term) pair's postings, weight x count, to the query's row of ``scores`` (B, documents)."""
        pairs = batch_pairs(queries, self.indptr, self.gather)
        if not len(pairs.rows):
            return
        if self.kernel == "triton":
            from .bm25_kernels import scatter_pairs

            return scatter_pairs(scores.view(-1), self.indices, self.data, pairs, self.documents)
        on_device = {
            name: torch.from_numpy(values).to(self.device)
            for name, values in (
                ("lengths", pairs.lengths), ("counts", pairs.counts), ("targets", pairs.rows * self.documents),
                ("shifts", pairs.starts - pairs.offsets[:-1]),  # a posting's place in the batch -> in the index
            )
        }  # fmt: skip
        flat = scores.view(-1)
        for first, last in zip(pairs.bounds[:-1].tolist(), pairs.bounds[1:].tolist()):
            begin, end = int(pairs.offsets[first]), int(pairs.offsets[last])
            if end == begin:
                continue
            ids = torch.arange(first, last, device=self.device)
            pair = torch.repeat_interleave(ids, on_device["lengths"][first:last], output_size=end - begin)
            position = torch.arange(begin, end, device=self.device) + on_device["shifts"][pair]
            target = on_device["targets"][pair] + self.indices[position]
            weights = self.data[position]
            if not (pairs.counts[first:last] == 1).all():  # a term twice in a query: its weight twice (exact for 1)
                weights = weights * on_device["counts"][pair]
            flat.index_add_(0, target, weights)


KERNELS = ("auto", "triton", "torch")


def scatter_kernel(kernel: str, device: torch.device) -> str:
    """'triton' (`stages.ml.bm25_kernels`: one fused kernel) where asked, or for 'auto' on CUDA with triton installed;
    else 'torch' (index_add_ over gathered postings). Both give the same float32 scores."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown BM25 scatter kernel {kernel!r}; use one of {KERNELS}")
    if kernel == "auto":
        return "triton" if device.type == "cuda" and importlib.util.find_spec("triton") else "torch"
    return kernel


def add_nonoccurrence(scores: torch.Tensor, extra: torch.Tensor) -> None:
    """bm25l, bm25+: each query's score for its absent terms, added to every document with a non-zero score (the
    entries scipy's product keeps)."""
    unmatched = scores == 0
    scores.add_(extra[:, None])
    scores.masked_fill_(unmatched, 0)


def top_k(scores: torch.Tensor, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of ``scores`` (B, documents) on the host, (int32 rows, float32 scores): by decreasing
    score, equal scores by lower row, the lowest rows kept where the k-th score ties; scores <= 0 give (-1, 0)."""
    values, found = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    if values.shape[1] > k:
        tied = (values[:, k] == values[:, k - 1]) & (values[:, k - 1] > 0)
        values, found = values[:, :k], found[:, :k]
        rows = tied.nonzero().squeeze(1)
        if len(rows):
            settle_ties(scores, values, found, rows, chunk)
    found, order = found.sort(dim=1)
    values = values.gather(1, order)
    values, order = values.sort(dim=1, descending=True, stable=True)
    found = found.gather(1, order)
    matched = values > 0
    found = torch.where(matched, found, -1).to(torch.int32)
    values = torch.where(matched, values, 0.0)
    return found.cpu().numpy(), values.cpu().numpy()


def settle_ties(
    scores: torch.Tensor, values: torch.Tensor, found: torch.Tensor, rows: torch.Tensor, chunk: int
) -> None:
    """In ``rows``, whose k-th score (``values`` sorted, decreasing) ties with documents topk left out, give the kept
    places of that score to the lowest rows holding it. ``chunk`` rows at a time ((chunk, documents) temporaries)."""
    documents, k = scores.shape[1], values.shape[1]
    keys = documents - torch.arange(documents, device=scores.device, dtype=torch.int32)  # a lower row, a larger key
    for part in rows.split(chunk):
        kth = values[part, k - 1]
        need = (values[part] == kth[:, None]).sum(1)  # the last places of the row
        tied = torch.where(scores[part] == kth[:, None], keys, 0)
        most = int(need.max())
        lowest = (documents - tied.topk(most, dim=1).values).to(found.dtype)  # increasing rows
        place = torch.arange(most, device=scores.device)
        valid = place[None, :] < need[:, None]
        columns = k - need[:, None] + place[None, :]
        found[part[:, None].expand(-1, most)[valid], columns[valid]] = lowest[valid]
