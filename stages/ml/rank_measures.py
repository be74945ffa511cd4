"""nDCG, RR, R, P and AP (with a cutoff or without) of a whole run at once, in numpy, as ir-measures computes them:
trec_eval's definitions (pytrec_eval; RR with a cutoff as MS MARCO's script), each sum taken in trec_eval's order, so
the values are the same floats. `stages.ml.measures.evaluate` uses them for the measures they cover.

A run names each document at most once per query (every stage's run does, from top-k results; `hardneg compare`
refuses repeats): ir-measures would keep one row of a repeated document, which moves the rows below it up. Its rank
column gives the order. Where two rows of a query share a rank, or a judged document repeats, `ranked_hits` gives None
and ir-measures decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.tables import lookup

KINDS = ("nDCG", "RR", "R", "P", "AP")
"""The ir-measures measures computed here."""


@dataclass(frozen=True)
class Native:
    """A measure as computed here."""

    kind: str
    cutoff: int | None
    """Positions counted (None: the whole ranking)."""
    rel: int
    """The lowest relevance that counts as relevant (binary measures)."""


def native(measure) -> Native | None:
    """The measure of an ir-measures measure object, or None where it needs ir-measures (another measure, or params
    such as ``judged_only`` or ``gains``)."""
    params = dict(measure.params)
    cutoff, rel = params.pop("cutoff", None), params.pop("rel", 1)
    if measure.NAME not in KINDS or params or not isinstance(rel, int):
        return None
    if cutoff is None and measure.NAME in ("P", "R"):
        return None
    if cutoff is not None and not (isinstance(cutoff, int) and cutoff > 0):
        return None
    return Native(measure.NAME, cutoff, rel)


@dataclass(frozen=True)
class Judgments:
    """Qrels as arrays: the judged queries in the order the qrels first name them, the judged documents, and each
    judgment (the last one where a (query, document) pair is judged twice, as ir-measures keeps it)."""

    query_ids: pa.Array
    documents: pa.Array
    query: np.ndarray
    """Each judgment's query (a position in ``query_ids``)."""
    doc: np.ndarray
    """Each judgment's document (a position in ``documents``)."""
    relevance: np.ndarray

    @classmethod
    def of(cls, qrels) -> Judgments:
        """From qrels (query_id, doc_id, relevance): an Arrow table or a frame."""
        query_ids, doc_ids = string_column(qrels, "query_id"), string_column(qrels, "doc_id")
        relevance = np.asarray(qrels["relevance"]).astype(np.int64)
        judged, documents = pc.unique(query_ids), pc.unique(doc_ids)
        query, doc = lookup(query_ids, judged), lookup(doc_ids, documents)
        pairs = query * len(documents) + doc
        kept = np.sort(len(pairs) - 1 - np.unique(pairs[::-1], return_index=True)[1])  # each pair's last row
        return cls(judged, documents, query[kept], doc[kept], relevance[kept])

    def relevant(self, rel: int) -> np.ndarray:
        """Relevant documents per query at level ``rel``."""
        return np.bincount(self.query[self.relevance >= rel], minlength=len(self.query_ids))

    def as_dict(self) -> dict[str, dict[str, int]]:
        """query id -> {doc id: relevance}, as ir-measures takes qrels."""
        judged: dict[str, dict[str, int]] = {query_id: {} for query_id in self.query_ids.to_pylist()}
        queries, docs = self.query_ids.to_pylist(), self.documents.to_pylist()
        for query, doc, relevance in zip(self.query.tolist(), self.doc.tolist(), self.relevance.tolist()):
            judged[queries[query]][docs[doc]] = relevance
        return judged


def string_column(table, name: str) -> pa.Array:
    """A column of an Arrow table or a frame as one Arrow string array."""
    column = table[name]
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks().cast(pa.string())
    return pa.array(column, pa.string())


@dataclass(frozen=True)
class Hits:
    """The judged documents a run ranks for judged queries, in ranking order: query number, 0-based position in the
    query's ranking, relevance."""

    query: np.ndarray
    position: np.ndarray
    relevance: np.ndarray


def group_starts(query: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, bool]:
    """Where each run of equal ``query`` values starts, and whether each query's rows are one run, in strictly
    increasing rank."""
    change = query[1:] != query[:-1]
    starts = np.concatenate([[0], np.flatnonzero(change) + 1]) if len(query) else np.zeros(0, np.int64)
    ordered = len(np.unique(query[starts])) == len(starts) and bool(np.all((rank[1:] > rank[:-1]) | change))
    return starts, ordered


def judged_positions(query: np.ndarray, rank: np.ndarray, doc: np.ndarray):
    """(query, 0-based position in the query's ranking by rank, doc) of each row that ranks a judged document
    (``doc`` >= 0) for a judged query (``query`` >= 0), each query's rows together in ranking order; None where a
    query ranks two rows alike. A run in that order already (as the stages write runs) is not sorted."""
    known = query >= 0
    if not known.all():
        query, rank, doc = query[known], rank[known], doc[known]
    starts, ordered = group_starts(query, rank)
    if not ordered:
        order = np.lexsort((rank, query))
        query, rank, doc = query[order], rank[order], doc[order]
        starts, ordered = group_starts(query, rank)
        if not ordered:
            return None
    first_row = np.zeros(int(query.max()) + 1 if len(query) else 0, np.int64)
    first_row[query[starts]] = starts
    rows = np.flatnonzero(doc >= 0)
    return query[rows], rows - first_row[query[rows]], doc[rows]


def first_in_group(groups: np.ndarray) -> np.ndarray:
    """Whether each element of ``groups`` (each group's elements together) is its group's first."""
    return np.concatenate([[True], groups[1:] != groups[:-1]]) if len(groups) else np.zeros(0, bool)


def within_group(groups: np.ndarray) -> np.ndarray:
    """Each element's 0-based position in its group (``groups``: each group's elements together)."""
    starts = np.flatnonzero(first_in_group(groups))
    return np.arange(len(groups)) - np.repeat(starts, np.diff(np.append(starts, len(groups))))


def ranked_hits(query_ids, doc_ids, ranks: np.ndarray, judgments: Judgments) -> Hits | None:
    """The `Hits` of a run's columns (query ids plain or dictionary-encoded, document ids, ranks); None where a query
    ranks two rows alike or a judged document twice."""
    docs = judgments.documents
    found = judged_positions(lookup(query_ids, judgments.query_ids), np.asarray(ranks), lookup(doc_ids, docs))
    if found is None:
        return None
    query, position, doc = found
    pairs = query * len(docs) + doc
    judged_pairs = judgments.query * len(docs) + judgments.doc
    sort = np.argsort(judged_pairs)
    slot = sort[np.searchsorted(judged_pairs, pairs, sorter=sort).clip(max=len(sort) - 1)]
    match = judged_pairs[slot] == pairs
    if len(np.unique(pairs[match])) < np.count_nonzero(match):
        return None  # a judged document ranked twice for a query
    return Hits(query[match], position[match], judgments.relevance[slot[match]])


def log2_positions(count: int) -> np.ndarray:
    """log2(i + 2) for positions i = 0 .. count - 1, by C's log2 as trec_eval takes it."""
    return np.array([math.log2(i + 2) for i in range(count)], dtype=np.float64)


def compute(measure: Native, hits: Hits, judgments: Judgments) -> np.ndarray:
    """Per judged query (in ``judgments.query_ids`` order) the value of ``measure``."""
    queries = len(judgments.query_ids)
    within = hits.position < (measure.cutoff or np.iinfo(np.int64).max)
    if measure.kind == "nDCG":
        return ndcg(hits, judgments, measure.cutoff, within)
    relevant = within & (hits.relevance >= measure.rel)
    query, position = hits.query[relevant], hits.position[relevant]
    if measure.kind == "P":
        return np.bincount(query, minlength=queries) / measure.cutoff
    if measure.kind == "RR":
        first = first_in_group(query)
        values = np.zeros(queries)
        values[query[first]] = 1 / (position[first] + 1)
        return values
    total = judgments.relevant(measure.rel).astype(np.float64)
    if measure.kind == "R":
        found = np.bincount(query, minlength=queries).astype(np.float64)
    else:  # AP: the precision at each relevant document, summed in rank order
        so_far = within_group(query) + 1
        found = np.bincount(query, weights=so_far / (position + 1), minlength=queries)
    return np.divide(found, total, out=np.zeros(queries), where=total > 0)


def ndcg(hits: Hits, judgments: Judgments, cutoff: int | None, within: np.ndarray) -> np.ndarray:
    """trec_eval's nDCG: gains are the relevance values above 0, discounts log2(position + 2), over the top
    ``cutoff``; 0 where the query has no document above 0."""
    queries = len(judgments.query_ids)
    gained = within & (hits.relevance > 0)
    position = hits.position[gained]
    discounts = log2_positions(int(position.max()) + 1 if len(position) else 0)
    dcg = np.bincount(hits.query[gained], weights=hits.relevance[gained] / discounts[position], minlength=queries)
    positive = judgments.relevance > 0
    query, gain = judgments.query[positive], judgments.relevance[positive]
    order = np.lexsort((-gain, query))
    query, gain = query[order], gain[order]
    ideal_position = within_group(query)
    kept = ideal_position < (cutoff or np.iinfo(np.int64).max)
    ideal_discounts = log2_positions(int(ideal_position[kept].max()) + 1 if kept.any() else 0)
    ideal = np.bincount(query[kept], weights=gain[kept] / ideal_discounts[ideal_position[kept]], minlength=queries)
    return np.divide(dcg, ideal, out=np.zeros(queries), where=ideal > 0)
