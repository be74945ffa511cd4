"""Stage `mine_negatives`: static hard negatives = the top of a run minus the judged positives.

Inputs: ``prepared`` (judgments), ``run`` (any artifact with run.parquet: BM25, or a dense run over the split's
queries). Output: negatives.parquet (query_id, doc_ids: list of strings in rank order), one row per judged query of
the split, possibly with no negatives (when the run missed the query or holds only positives). Prints a summary, as
sentence-transformers' ``mine_hard_negatives`` does. The run is read `BATCH_ROWS` rows at a time as Arrow columns
and filtered with numbers (query and document positions), never as a Python object per row.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .core import parquet_io
from .core.cli import run_stage
from .core.errors import ArtifactError, ConfigError, DataError
from .core.artifacts import NEGATIVES, RUN_PARQUET
from .core.tables import NEGATIVES_SCHEMA, lookup, read_qrels

VERSION = 1
BATCH_ROWS = 1 << 22
"""Run rows read at a time."""
log = logging.getLogger("stages.mine_negatives")



@dataclass
class MineParams:
    split: str
    """Whose queries get negatives; the run must answer this split's queries."""
    depth: int
    """Take negatives from the run's top this many documents (paper: top-200)."""
    exclude_positives: bool
    """Drop documents judged relevant (relevance >= 1) to the query."""
    skip_top: int
    """Also drop the run's top this many ranks: on sparsely judged data they hold unjudged relevant documents
    (false negatives); sentence-transformers' recipe mines from ranks 10-100. 0 = the paper (top-200 minus positives)."""


def mine(params: MineParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    if not 0 <= params.skip_top < params.depth:
        raise ConfigError(f"skip_top={params.skip_top}, depth={params.depth}", fix="need 0 <= skip_top < depth")
    qrels = read_qrels(inputs["prepared"], params.split)
    if qrels.empty:
        raise DataError(f"no judgments for split {params.split!r}", path=inputs["prepared"])
    judged = pa.array(sorted(qrels["query_id"].unique()), pa.string())
    positives = Positives(qrels, judged) if params.exclude_positives else None
    picked = pick(Path(inputs["run"]) / RUN_PARQUET, judged, positives, params)
    if not picked.answered.any():
        raise DataError(
            f"the run answers none of the {len(judged)} judged queries of split {params.split!r}",
            path=Path(inputs["run"]),
            fix=f"mine from a run over the {params.split!r} queries",
        )
    negatives = picked.table(judged, params.depth)
    parquet_io.write_table(negatives, Path(out_dir) / NEGATIVES)
    counts = np.diff(negatives.column("doc_ids").combine_chunks().offsets.to_numpy())
    summary = {
        "split": params.split,
        "depth": params.depth,
        "skip_top": params.skip_top,
        "queries": len(negatives),
        "queries_not_in_run": len(judged) - int(picked.answered.sum()),
        "queries_without_negatives": int((counts == 0).sum()),
        "mean_negatives_per_query": round(float(counts.mean()), 2),
        "min_negatives": int(counts.min()),
        "max_negatives": int(counts.max()),
        "positives_removed": picked.removed,
    }
    print(format_summary(summary))
    return {**summary, "items": {"queries": len(negatives)}}


class Positives:
    """The judged (query, document) pairs with relevance >= 1, as numbers: query number (in ``judged``) times the
    number of positive documents plus document number."""

    def __init__(self, qrels: pd.DataFrame, judged: pa.Array):
        relevant = qrels[qrels["relevance"] >= 1]
        self.doc_ids = pa.array(relevant["doc_id"].unique(), pa.string())
        queries = lookup(pa.array(relevant["query_id"], pa.string()), judged)
        docs = lookup(pa.array(relevant["doc_id"], pa.string()), self.doc_ids)
        self.keys = pa.array(np.unique(queries * len(self.doc_ids) + docs))

    def contains(self, queries: np.ndarray, doc_ids: pa.Array) -> np.ndarray:
        """Whether each (query number, document) pair is positive."""
        docs = lookup(doc_ids, self.doc_ids)
        found = np.zeros(len(docs), dtype=bool)
        maybe = np.flatnonzero(docs >= 0)  # documents positive for some query
        keys = pa.array(queries[maybe] * len(self.doc_ids) + docs[maybe])
        found[maybe] = pc.is_in(keys, value_set=self.keys).to_numpy(zero_copy_only=False)
        return found


@dataclass
class Picked:
    """The run's rows in the rank window for judged queries, positives removed (if asked), in the run's order."""

    queries: list[np.ndarray] = field(default_factory=list)
    ranks: list[np.ndarray] = field(default_factory=list)
    doc_ids: list[pa.Array] = field(default_factory=list)
    answered: np.ndarray | None = None
    removed: int = 0

    def table(self, judged: pa.Array, depth: int) -> pa.Table:
        """One row per judged query, in ``judged``'s order: its documents in rank order (a stable sort)."""
        queries = np.concatenate([np.zeros(0, np.int64), *self.queries])
        key = queries * (depth + 1) + np.concatenate([np.zeros(0, np.int64), *self.ranks])
        doc_ids = pa.chunked_array(self.doc_ids, pa.string())
        if np.any(key[1:] < key[:-1]):  # a run written sorted by (query_id, rank) needs no sort
            order = np.argsort(key, kind="stable")
            queries, doc_ids = queries[order], doc_ids.take(pa.array(order))
        offsets = np.concatenate([[0], np.cumsum(np.bincount(queries, minlength=len(judged)))])
        lists = pa.ListArray.from_arrays(pa.array(offsets).cast(pa.int32()), doc_ids.combine_chunks())
        return pa.Table.from_arrays([judged, lists], schema=NEGATIVES_SCHEMA)


def pick(path: Path, judged: pa.Array, positives: Positives | None, params: MineParams) -> Picked:
    """Stream the run's (query_id, doc_id, rank) columns, keeping the rows that become negatives."""
    if not path.is_file():
        raise ArtifactError("missing table", path=path, fix="rerun the stage that writes it")
    picked = Picked(answered=np.zeros(len(judged), dtype=bool))
    columns = ["query_id", "doc_id", "rank"]
    for batch in parquet_io.iter_batches(path, batch_size=BATCH_ROWS, columns=columns, read_dictionary=["query_id"]):
        queries = lookup(batch.column("query_id"), judged)
        picked.answered[queries[queries >= 0]] = True
        ranks = batch.column("rank").to_numpy(zero_copy_only=False)
        keep = (queries >= 0) & (ranks > params.skip_top) & (ranks <= params.depth)
        queries, ranks, doc_ids = queries[keep], ranks[keep], batch.column("doc_id").filter(pa.array(keep))
        if positives is not None:
            positive = positives.contains(queries, doc_ids)
            picked.removed += int(positive.sum())
            queries, ranks, doc_ids = queries[~positive], ranks[~positive], doc_ids.filter(pa.array(~positive))
        picked.queries.append(queries)
        picked.ranks.append(ranks)
        picked.doc_ids.append(doc_ids.cast(pa.string()))
    return picked


def format_summary(summary: Mapping[str, object]) -> str:
    width = max(map(len, summary))
    lines = [f"  {name.replace('_', ' '):<{width}}  {value}" for name, value in summary.items()]
    return "Hard negative mining summary:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_stage("mine_negatives", MineParams, mine, argv)


if __name__ == "__main__":
    sys.exit(main())
