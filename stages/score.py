"""Stage `score`: evaluate a run (the registry's measures in numpy, as ir-measures computes them; any other by
ir-measures); 95% bootstrap intervals over queries; per-query values.

Inputs: ``prepared`` (judgments), ``run`` (any artifact with run.parquet). Outputs: metrics.json, per_query.parquet
(query_id, measure, value). Judged queries that the run does not answer count as 0.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .core import parquet_io
from .core.cli import run_stage
from .core.errors import DataError
from .ml.measures import check, evaluate_arrays
from .ml.stats import bootstrap_cis
from .core.artifacts import PER_QUERY
from .core.tables import read_qrels_table, read_run_table

VERSION = 2
log = logging.getLogger("stages.score")
PER_QUERY_SCHEMA = pa.schema([("query_id", pa.large_string()), ("measure", pa.large_string()), ("value", pa.float64())])


@dataclass
class ScoreParams:
    split: str
    measures: list[str]
    """Names of the measures registry (`stages.ml.measures`)."""
    relevance_level: int
    """Lowest judgment that counts as relevant for binary measures (graded judgments are kept for nDCG)."""
    bootstrap_samples: int
    seed: int


def score(params: ScoreParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    for name in params.measures:
        check(name)
    qrels = read_qrels_table(inputs["prepared"], params.split)
    if not qrels.num_rows:
        raise DataError(f"no judgments for split {params.split!r}", path=inputs["prepared"])
    run = read_run_table(inputs["run"])
    unjudged = len(set(distinct(run["query_id"]).to_pylist()) - set(qrels["query_id"].to_pylist()))
    if unjudged:
        log.warning("%d run queries have no judgments in split %s and are ignored", unjudged, params.split)
    query_ids, names, values = evaluate_arrays(run, qrels, params.measures, params.relevance_level)
    intervals = bootstrap_cis(values, params.bootstrap_samples, params.seed)
    metrics = {}
    for name, column, (low, high) in zip(names, values.T, intervals):
        metrics[name] = {"mean": float(column.mean()), "ci95": [low, high]}
        log.info("%s = %.4f [%.4f, %.4f]", name, column.mean(), low, high)
    result = {"split": params.split, "queries": len(query_ids), "metrics": metrics}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_per_query(out_dir / PER_QUERY, query_ids, names, values)
    return {"split": params.split, "queries": result["queries"], "items": {"queries": result["queries"]}}


def distinct(ids: pa.ChunkedArray) -> pa.Array:
    """The distinct values of a column, plain or dictionary-encoded (from its dictionaries, not its rows)."""
    if pa.types.is_dictionary(ids.type):
        ids = pa.chunked_array([chunk.dictionary for chunk in ids.chunks], ids.type.value_type)
    return pc.unique(ids)


def write_per_query(path: Path, query_ids: pa.Array, names: list[str], values: np.ndarray) -> None:
    """per_query.parquet: a row a (query, measure), query by query (``values``: a row a query, a column a measure)."""
    rows = pa.array(np.repeat(np.arange(len(query_ids)), len(names)))
    columns = [query_ids.take(rows), pa.array(names * len(query_ids)), pa.array(values.ravel())]
    table = pa.Table.from_arrays(columns, names=PER_QUERY_SCHEMA.names).cast(PER_QUERY_SCHEMA)
    parquet_io.write_table(table, path)


def main(argv: list[str] | None = None) -> int:
    return run_stage("score", ScoreParams, score, argv)


if __name__ == "__main__":
    sys.exit(main())
