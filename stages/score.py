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

import pandas as pd

from .core.cli import run_stage
from .core.errors import ConfigError, DataError
from .ml.stats import query_interval
from .core.tables import qrels_dict, read_qrels, read_run, write_table

VERSION = 2
log = logging.getLogger("stages.score")

# Report names -> ir-measures measure names (binary measures take the relevance level).
MEASURES = {"nDCG@10": "nDCG@10", "MRR@10": "RR{rel}@10", "R@100": "R{rel}@100", "R@1000": "R{rel}@1000", "MAP": "AP{rel}"}


@dataclass
class ScoreParams:
    split: str
    measures: list[str]
    """Any of nDCG@10, MRR@10, R@100, R@1000, MAP."""
    relevance_level: int
    """Lowest judgment that counts as relevant for binary measures (graded judgments are kept for nDCG)."""
    bootstrap_samples: int
    seed: int


def ir_measure(name: str, relevance_level: int):
    import ir_measures

    if name not in MEASURES:
        raise ConfigError(f"unknown measure {name!r}", fix=f"use some of {list(MEASURES)}")
    rel = f"(rel={relevance_level})" if relevance_level != 1 else ""
    return ir_measures.parse_measure(MEASURES[name].format(rel=rel))


def evaluate(run: pd.DataFrame, qrels: pd.DataFrame, measures: list[str], relevance_level: int) -> pd.DataFrame:
    """Per-query values (query_id, measure, value) for every judged query.

    Every measure sees the order the run states (its rank column): the scores given to ir-measures are minus the
    rank, since its backends re-sort by score and break ties by doc id."""
    import ir_measures

    judged = qrels_dict(qrels)
    ranked: dict[str, dict[str, float]] = {}
    columns = (run[name].tolist() for name in ("query_id", "doc_id", "rank"))  # lists: 3x faster than itertuples
    for query_id, doc_id, rank in zip(*columns):
        ranked.setdefault(query_id, {})[doc_id] = -float(rank)
    objects = {name: ir_measure(name, relevance_level) for name in measures}
    names = {str(measure): name for name, measure in objects.items()}
    values = {(q, name): 0.0 for q in judged for name in measures}
    for metric in ir_measures.iter_calc(list(objects.values()), judged, ranked):
        values[(metric.query_id, names[str(metric.measure)])] = float(metric.value)
    return pd.DataFrame([(q, m, v) for (q, m), v in values.items()], columns=["query_id", "measure", "value"])


def score(params: ScoreParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
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
    write_table(per_query, out_dir / "per_query.parquet")
    return {"split": params.split, "queries": result["queries"], "items": {"queries": result["queries"]}}


def main(argv: list[str] | None = None) -> int:
    return run_stage("score", ScoreParams, score, argv)


if __name__ == "__main__":
    sys.exit(main())
