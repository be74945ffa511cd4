"""Stage score and the statistics: measures against hand computation, unanswered queries, intervals, paired test."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from stages.core import settings
from stages.score import ScoreParams, score
from stages.ml.measures import evaluate
from stages.ml.stats import bootstrap_ci, compare, paired_randomization_test
from stages.core.tables import write_run

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
    params = settings.params(ScoreParams, "score", split="test", measures=["MRR@10"], bootstrap_samples=200)
    score(params, {"prepared": prepared, "run": run_dir}, out)
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


def test_tied_scores_every_measure_sees_the_run_order():
    # duplicate documents get identical scores; the judged copy 'a' is ranked first, its twin 'z' (a higher doc id,
    # which trec_eval's tie-break would put first) second
    qrels = pd.DataFrame({"split": "test", "query_id": ["q1"], "doc_id": ["a"], "relevance": [1]})
    run = run_frame([("q1", "a", 1, 0.5), ("q1", "z", 2, 0.5), ("q1", "m", 3, 0.5)])
    values = evaluate(run, qrels, ["nDCG@10", "MRR@10", "MAP"], 1).set_index("measure")["value"]
    assert values["MRR@10"] == 1.0 and values["nDCG@10"] == pytest.approx(1.0) and values["MAP"] == 1.0


def test_trec_run_scores_strictly_decrease_with_rank(tmp_path):
    run = run_frame(
        [("q1", "a", 1, 0.5), ("q1", "z", 2, 0.5), ("q1", "m", 3, 0.5), ("q1", "n", 4, 0.4999995), ("q2", "b", 1, -3.0)]
        + [("q2", "c", 2, -3.0)]
    )
    write_run(run, tmp_path, "t")
    lines = [line.split() for line in (tmp_path / "run.trec").read_text().splitlines()]
    scores = {}
    for query_id, _, doc_id, rank, value, tag in lines:
        scores.setdefault(query_id, []).append(float(value))
    assert all(a > b for values in scores.values() for a, b in zip(values, values[1:]))
    assert scores["q1"][0] == 0.5 and scores["q2"] == [-3.0, -3.000001]
    # trec_eval reads the file in the order it states: pytrec_eval on the file's scores ranks 'a' first
    import ir_measures

    ranked = {}
    for query_id, _, doc_id, rank, value, tag in lines:
        ranked.setdefault(query_id, {})[doc_id] = float(value)
    result = ir_measures.calc_aggregate([ir_measures.parse_measure("RR@10")], {"q1": {"a": 1}}, {"q1": ranked["q1"]})
    assert list(result.values())[0] == 1.0
