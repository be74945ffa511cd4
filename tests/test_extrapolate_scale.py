"""benchmarks/extrapolate_scale.py: the linear model, the growth pairing, the timeline, and the committed 1M JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import extrapolate_scale as ex  # noqa: E402


def stage(name, key, wall, items=None, roles=None, rss=1.0):
    return {"stage": name, "key": key, "roles": roles or [], "wall_s": wall, "items": items or {},
            "items_per_s": {}, "peak_rss_gib": rss}


def small_run() -> dict:
    return {
        "label": "10k: 10000 passages, 1000 train queries, 100 dev queries",
        "stages": [
            stage("prepare", "p", 2.0, {"documents": 10_000}),
            stage("bm25", "bd", 1.0, {}),  # no items: the split comes from the larger run's role
            stage("bm25", "bt", 4.0, {}),
            stage("train_star", "t", 10.0, {"queries": 320, "steps": 10}),
        ],
    }


def large_run() -> dict:
    return {
        "label": "100k: 100000 passages, 10000 train queries, 100 dev queries",
        "work_s": {"p2": 5.0, "bt2": 30.0, "t2": 4.0},
        "benchmarks": {"bm25": {"ours_16_threads": {"queries": 10_000, "seconds": 10.0}}},
        "snakemake_jobs": [
            {"rule": "prepare_dataset", "start": "10:00:00", "end": "10:00:10"},
            {"rule": "bm25_retrieve", "start": "10:00:10", "end": "10:00:20"},
            {"rule": "bm25_retrieve", "start": "10:00:15", "end": "10:00:50"},
            {"rule": "train_star", "start": "10:00:50", "end": "10:01:10"},
            {"rule": "score_run", "start": "10:01:00", "end": "10:01:05"},
        ],
        "stages": [
            stage("prepare", "p2", 10.0, {"documents": 100_000}, rss=2.0),
            stage("bm25", "bd2", 2.0, {"queries": 100}, ["bm25:bm25-dev"]),
            stage("bm25", "bt2", 40.0, {"queries": 10_000}, ["star/seed-1:bm25-train"]),
            stage("train_star", "t2", 10.0, {"queries": 320, "steps": 10}, ["star/seed-1:star"], rss=3.0),
            stage("report", "r", 1.0),
        ],
    }


def test_sizes_from_the_label():
    assert ex.sizes("1m: 1000000 passages, 100000 train queries, 6980 dev queries") == {
        "passages": 1_000_000, "train": 100_000, "dev": 6980}
    with pytest.raises(ValueError):
        ex.sizes("no counts here")


def test_linear_factors_and_totals():
    target = {"passages": 1_000_000, "train": 20_000, "dev": 100}
    rows, totals = ex.extrapolate(large_run(), target)
    by_key = {row["key"]: row for row in rows}
    assert "t2" not in by_key  # training left out
    assert by_key["p2"]["factor"] == pytest.approx(10.0)  # passages
    assert by_key["bd2"]["factor"] == pytest.approx(10.0)  # dev queries x passages
    assert by_key["bt2"]["factor"] == pytest.approx(20.0)  # train queries x passages
    assert by_key["r"]["factor"] == 1.0
    assert by_key["bt2"]["linear_s"] == pytest.approx(800.0)
    assert by_key["bt2"]["start_plus_work_s"] == pytest.approx(10.0 + 30.0 * 20)  # start kept, work scaled
    assert by_key["bd2"]["start_plus_work_s"] == pytest.approx(by_key["bd2"]["linear_s"])  # no timer: all scaled
    assert totals["wall_s"] == pytest.approx(53.0)
    assert totals["linear_s"] == pytest.approx(100 + 20 + 800 + 1)


def test_epochs_at_the_measured_step_rates():
    [row] = ex.epochs(large_run(), {"passages": 1, "train": 3200, "dev": 1})
    assert row["epoch_steps"] == 100  # 3200 queries, 32 a step
    assert row["epoch_at_stage_rate_s"] == pytest.approx(100.0)  # 1 step/s over the whole stage
    assert row["epoch_start_plus_steps_s"] == pytest.approx(6.0 + 100 * 0.4)


def test_bm25_at_the_benchmark_rate():
    target = {"passages": 1_000_000, "train": 20_000, "dev": 100}
    variant = ex.bm25_at_benchmark(large_run(), target)
    per_pair = 10.0 / (10_000 * 100_000)
    assert variant["now_s"] == pytest.approx(10.0 + per_pair * 20_000 * 1_000_000)
    _, totals = ex.extrapolate(large_run(), target)
    assert variant["total_s"] == pytest.approx(totals["start_plus_work_s"] - variant["was_s"] + variant["now_s"])


def test_growth_pairs_occurrences_and_borrows_the_split():
    rows = {row["large_key"]: row for row in ex.growth(small_run(), large_run())}
    assert set(rows) == {"p2", "bd2", "bt2"}  # training and report left out
    assert rows["bt2"]["small_key"] == "bt"
    # 4 s for 1000 train queries x 10k passages, 40 s for 10k x 100k
    assert rows["bt2"]["ratio"] == pytest.approx((40 / 1e9) / (4 / 1e7))
    assert rows["bd2"]["ratio"] == pytest.approx((2 / 1e7) / (1 / 1e6))
    assert rows["p2"]["ratio"] == pytest.approx((10 / 1e5) / (2 / 1e4))


def test_timeline_unions_overlapping_jobs():
    span = ex.timeline(large_run())
    assert span["any_job_running_s"] == 70
    assert span["non_training_job_running_s"] == 55  # 0-50 and 60-65
    assert span["only_training_running_s"] == 15
    assert span["summed_non_training_job_s"] == 10 + 10 + 35 + 5


def test_report_on_the_committed_runs():
    one = json.loads((ROOT / "docs/results/scale-h200/1m.json").read_text())
    small = json.loads((ROOT / "docs/results/scale-h200/100k.json").read_text())
    assert one["complete"] is True
    text = ex.report(one, small)
    assert "total, training excluded" in text and "growth 100k -> 1m" in text
    rows, _ = ex.extrapolate(one)
    assert len(rows) == sum(1 for e in one["stages"] if e["stage"] not in ex.TRAINING)
    assert len(ex.epochs(one)) == 4
