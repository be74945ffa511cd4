"""Stage `mine_negatives`: static hard negatives = the top of a run minus the judged positives.

Inputs: ``prepared`` (judgments), ``run`` (any artifact with run.parquet: BM25, or a dense run over the split's
queries). Output: negatives.parquet (query_id, doc_ids: list of strings in rank order), one row per judged query of
the split, possibly with no negatives (when the run missed the query or holds only positives). Prints a summary, as
sentence-transformers' ``mine_hard_negatives`` does.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.cli import run_stage
from stages.errors import ArtifactError, ConfigError, DataError
from stages.tables import read_qrels, read_run, write_table

VERSION = 1
log = logging.getLogger("stages.mine_negatives")

NEGATIVES = "negatives.parquet"
NEGATIVES_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_ids", pa.list_(pa.string()))])


@dataclass
class MineParams:
    split: str = "train"
    """Whose queries get negatives; the run must answer this split's queries."""
    depth: int = 200
    """Take negatives from the run's top this many documents (paper: top-200)."""
    exclude_positives: bool = True
    """Drop documents judged relevant (relevance >= 1) to the query."""
    skip_top: int = 0
    """Also drop the run's top this many ranks: on sparsely judged data they hold unjudged relevant documents
    (false negatives); sentence-transformers' recipe mines from ranks 10-100. 0 = the paper (top-200 minus positives)."""


def mine(params: MineParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    qrels = read_qrels(inputs["prepared"], params.split)
    if qrels.empty:
        raise DataError(f"no judgments for split {params.split!r}", path=inputs["prepared"])
    positives = qrels[qrels["relevance"] >= 1].groupby("query_id")["doc_id"].agg(set).to_dict()
    judged = sorted(qrels["query_id"].unique())
    run = read_run(inputs["run"])
    answered = set(run["query_id"]) & set(judged)
    if not answered:
        raise DataError(
            f"the run answers none of the {len(judged)} judged queries of split {params.split!r}",
            path=Path(inputs["run"]),
            fix=f"mine from a run over the {params.split!r} queries",
        )
    if not 0 <= params.skip_top < params.depth:
        raise ConfigError(f"skip_top={params.skip_top}, depth={params.depth}", fix="need 0 <= skip_top < depth")
    window = (run["rank"] > params.skip_top) & (run["rank"] <= params.depth)
    top = run[run["query_id"].isin(answered) & window].sort_values(["query_id", "rank"])
    ranked = top.groupby("query_id", sort=False)["doc_id"].agg(list).to_dict()
    rows, removed = [], 0
    for query_id in judged:
        docs = ranked.get(query_id, [])
        if params.exclude_positives:
            kept = [d for d in docs if d not in positives.get(query_id, ())]
            removed += len(docs) - len(kept)
            docs = kept
        rows.append((query_id, docs))
    negatives = pd.DataFrame(rows, columns=["query_id", "doc_ids"])
    write_table(negatives, Path(out_dir) / NEGATIVES, NEGATIVES_SCHEMA)
    counts = negatives["doc_ids"].map(len)
    summary = {
        "split": params.split,
        "depth": params.depth,
        "skip_top": params.skip_top,
        "queries": len(negatives),
        "queries_not_in_run": len(judged) - len(answered),
        "queries_without_negatives": int((counts == 0).sum()),
        "mean_negatives_per_query": round(float(counts.mean()), 2),
        "min_negatives": int(counts.min()),
        "max_negatives": int(counts.max()),
        "positives_removed": removed,
    }
    print(format_summary(summary))
    return {**summary, "items": {"queries": len(negatives)}}


def format_summary(summary: Mapping[str, object]) -> str:
    width = max(map(len, summary))
    lines = [f"  {name.replace('_', ' '):<{width}}  {value}" for name, value in summary.items()]
    return "Hard negative mining summary:\n" + "\n".join(lines)


def read_negatives(artifact: Path) -> dict[str, list[str]]:
    """query_id -> negative doc ids in rank order, from a `mine_negatives` artifact."""
    path = Path(artifact) / NEGATIVES
    if not path.is_file():
        raise ArtifactError("missing negatives table", path=path, fix="pass a mine_negatives artifact as 'negatives'")
    table = pq.read_table(path)
    return dict(zip(table.column("query_id").to_pylist(), table.column("doc_ids").to_pylist()))


def main(argv: list[str] | None = None) -> int:
    return run_stage("mine_negatives", MineParams, mine, argv)


if __name__ == "__main__":
    sys.exit(main())
