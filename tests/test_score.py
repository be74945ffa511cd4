"""Stage score and the statistics: measures against hand computation, unanswered queries, intervals, paired test."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from stages.score import ScoreParams, evaluate, score
from stages.stats import bootstrap_ci, compare, paired_randomization_test
from stages.tables import write_run

QRELS = pd.DataFrame(
    {"split": "test", "query_id": ["q1", "q1", "q2", "q3"], "doc_id": ["a", "b", "c", "d"], "relevance": [2, 1, 1, 1]}
)


def run_frame(rows):
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"])


def test_measures_match_hand_computation():
    run = run_frame([("q1", "x", 1, 3.0), ("q1", "a", 2, 2.0), ("q1", "b", 3, 1.0), ("q2", "c", 1, 1.0)])
    values = evaluate(run, QRELS, ["nDCG@10", "MRR@10", "R@100"], relevance_level=1).set_index(["query_id", "measure"])
    ideal = 2 / math.log2(2) + 1 / math.log2(3)  # trec_eval's nDCG: linear gains (relevance 2 counts 2)
    assert values.loc[("q1", "nDCG@10"), "value"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(4)) / ideal)
    assert values.loc[("q1", "MRR@10"), "value"] == pytest.approx(0.5)
    assert values.loc[("q2", "MRR@10"), "value"] == pytest.approx(1.0)
    assert values.loc[("q3", "R@100"), "value"] == 0.0  # judged but not answered: counts as 0


def test_relevance_level_changes_binary_measures_only():
    run = run_frame([("q1", "b", 1, 2.0), ("q1", "a", 2, 1.0)])
    qrels = QRELS[QRELS["query_id"] == "q1"]
    lenient = evaluate(run, qrels, ["MRR@10", "nDCG@10"], 1).set_index("measure")["value"]
    strict = evaluate(run, qrels, ["MRR@10", "nDCG@10"], 2).set_index("measure")["value"]
    assert lenient["MRR@10"] == 1.0 and strict["MRR@10"] == 0.5
    assert lenient["nDCG@10"] == strict["nDCG@10"]


def test_score_stage_writes_metrics_with_intervals(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    QRELS.to_parquet(prepared / "qrels.parquet")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run(run_frame([("q1", "a", 1, 1.0), ("q2", "z", 1, 1.0), ("q3", "d", 1, 1.0)]), run_dir, "t")
    out = tmp_path / "score"
    out.mkdir()
    score(ScoreParams(measures=["MRR@10"], bootstrap_samples=200), {"prepared": prepared, "run": run_dir}, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["queries"] == 3
    assert metrics["metrics"]["MRR@10"]["mean"] == pytest.approx(2 / 3)
    low, high = metrics["metrics"]["MRR@10"]["ci95"]
    assert 0 <= low <= 2 / 3 <= high <= 1
    assert len(pd.read_parquet(out / "per_query.parquet")) == 3


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_queries():
    rng = np.random.default_rng(1)
    small, large = rng.random(50), rng.random(5000)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    low_large, high_large = bootstrap_ci(large)
    assert high_large - low_large < high - low


def test_paired_test_separates_real_from_null_differences():
    rng = np.random.default_rng(2)
    a = rng.random(300)
    assert paired_randomization_test(a, a + 0.05, samples=2000) < 0.01
    assert paired_randomization_test(a, a + rng.normal(0, 0.01, 300), samples=2000) > 0.05


def test_compare_two_score_artifacts(tmp_path):
    for name, values in (("a", [1.0, 0.5, 1.0]), ("b", [0.0, 0.5, 0.0])):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame({"query_id": ["q1", "q2", "q3"], "measure": "nDCG@10", "value": values}).to_parquet(
            folder / "per_query.parquet"
        )
    result = compare(tmp_path / "a", tmp_path / "b", "nDCG@10", samples=500)
    assert result["difference"] == pytest.approx(2 / 3) and 0 < result["p_value"] <= 1
