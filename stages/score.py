"""Stage `score`: evaluate a run with ir-measures; 95% bootstrap intervals over queries; per-query values.

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


from .core.cli import run_stage
from .core.errors import DataError
from .ml.measures import check, evaluate
from .ml.stats import query_interval
from .core.artifacts import PER_QUERY
from .core.tables import read_qrels, read_run, write_table

VERSION = 2
log = logging.getLogger("stages.score")

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
    qrels = read_qrels(inputs["prepared"], params.split)
    if qrels.empty:
        raise DataError(f"no judgments for split {params.split!r}", path=inputs["prepared"])
    run = read_run(inputs["run"])
    unjudged = set(run["query_id"]) - set(qrels["query_id"])
    if unjudged:
        log.warning("%d run queries have no judgments in split %s and are ignored", len(unjudged), params.split)
    per_query = evaluate(run, qrels, params.measures, params.relevance_level)
    metrics = {}
    for name in params.measures:
        values = per_query.loc[per_query["measure"] == name, "value"].to_numpy()
        low, high = query_interval([per_query], name, params.bootstrap_samples, params.seed)
        metrics[name] = {"mean": float(values.mean()), "ci95": [low, high]}
        log.info("%s = %.4f [%.4f, %.4f]", name, values.mean(), low, high)
    result = {"split": params.split, "queries": int(per_query["query_id"].nunique()), "metrics": metrics}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_table(per_query, out_dir / PER_QUERY)
    return {"split": params.split, "queries": result["queries"], "items": {"queries": result["queries"]}}


def main(argv: list[str] | None = None) -> int:
    return run_stage("score", ScoreParams, score, argv)


if __name__ == "__main__":
    sys.exit(main())
