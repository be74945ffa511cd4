"""The report stage on hand-made score artifacts: seed means and stds, intervals (the score artifact's for one seed),
Holm-corrected p-values, the table's rules, and the plots' panels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from stages.core import settings
from stages.core.errors import ConfigError
from stages.report.stage import ReportParams, aggregate, report
from stages.report.plots import smoothing_window
from stages.report.table import p_text
from stages.score import ScoreParams, score
from stages.ml.stats import holm, p_floor, query_interval
from stages.core.tables import write_run


def score_artifact(folder, values: dict[str, list[float]]):
    """per_query.parquet and metrics.json with a deliberately wrong interval, to see which one the report uses."""
    folder.mkdir(parents=True)
    rows = [(f"q{i}", measure, v) for measure, vs in values.items() for i, v in enumerate(vs)]
    pd.DataFrame(rows, columns=["query_id", "measure", "value"]).to_parquet(folder / "per_query.parquet")
    metrics = {measure: {"mean": float(np.mean(vs)), "ci95": [0.1, 0.9]} for measure, vs in values.items()}
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    return folder


def train_artifact(folder, seconds: float, stage: str = "train_star", **columns):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"seconds": seconds, "device": "cuda"}))
    (folder / "manifest.json").write_text(json.dumps({"stage": stage, "params": {"loss": "listwise", "metric": "mrr"}}))
    pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.6, 0.4], **columns}).to_parquet(folder / "train_log.parquet")
    return folder


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 50)
    return {
        "score_0": score_artifact(tmp_path / "a", {"nDCG@10": base}),
        "score_1": score_artifact(tmp_path / "b1", {"nDCG@10": np.clip(base + 0.2, 0, 1)}),
        "score_2": score_artifact(tmp_path / "b2", {"nDCG@10": np.clip(base + 0.3, 0, 1)}),
        "train_0": train_artifact(tmp_path / "t1", 10.0, **{"dev_nDCG@10": [np.nan, np.nan, 0.5]}),
        "train_1": train_artifact(tmp_path / "t2", 14.0),
    }


def params(**changes) -> ReportParams:
    rows = [
        {"variant": "zeroshot", "method": "zeroshot", "seed": None, "split": "test", "index": "pq",
         "score": "score_0", "train": []},
        {"variant": "star", "method": "star", "seed": 1, "split": "test", "index": "flat",
         "score": "score_1", "train": ["train_0"]},
        {"variant": "star", "method": "star", "seed": 2, "split": "test", "index": "flat",
         "score": "score_2", "train": ["train_1"]},
    ]  # fmt: skip
    values = {"rows": rows, "reference": "star", "measures": ["nDCG@10"], **changes}
    return settings.params(ReportParams, "report", "score", **values)


def test_seeds_are_averaged_and_compared_with_the_reference(inputs):
    table = aggregate(params(), inputs).set_index("variant")
    star = [pd.read_parquet(inputs[f"score_{i}"] / "per_query.parquet")["value"].mean() for i in (1, 2)]
    assert table.loc["star", "nDCG@10"] == pytest.approx(np.mean(star))
    assert table.loc["star", "nDCG@10 std"] == pytest.approx(np.std(star, ddof=1))
    assert np.isnan(table.loc["zeroshot", "nDCG@10 std"])  # one seed: no spread to speak of
    assert table.loc["star", "seeds"] == 2 and table.loc["star", "train seconds"] == pytest.approx(12.0)
    assert table.loc["zeroshot", "nDCG@10 p"] == pytest.approx(p_floor())  # 0.25 worse on every query
    assert table.loc["zeroshot", "nDCG@10 p holm"] == pytest.approx(p_floor())  # one comparison: unchanged
    assert np.isnan(table.loc["star"].get("nDCG@10 p", np.nan))


def test_intervals_are_the_score_artifacts_for_one_seed_and_of_the_seed_average_for_several(inputs):
    table = aggregate(params(bootstrap_samples=300, seed=4), inputs).set_index("variant")
    assert table.loc["zeroshot", "nDCG@10 ci95"] == (0.1, 0.9)  # metrics.json's, not bootstrapped again
    frames = [pd.read_parquet(inputs[f"score_{i}"] / "per_query.parquet") for i in (1, 2)]
    assert table.loc["star", "nDCG@10 ci95"] == query_interval(frames, "nDCG@10", 300, 4)
    low, high = table.loc["star", "nDCG@10 ci95"]
    assert low < table.loc["star", "nDCG@10"] < high


def test_a_one_seed_row_has_the_interval_the_score_stage_wrote(tmp_path):
    # queries deliberately not in id order: sorting them before resampling gave the report another interval
    ids = [f"q{i}" for i in rng_order(40)]
    prepared, run_dir, out = tmp_path / "prepared", tmp_path / "run", tmp_path / "score"
    for folder in (prepared, run_dir, out):
        folder.mkdir()
    qrels = pd.DataFrame({"split": "test", "query_id": ids, "doc_id": [f"d{q}" for q in ids], "relevance": 1})
    qrels.to_parquet(prepared / "qrels.parquet")
    run = pd.DataFrame([(q, f"d{q}" if i % 3 else "x", 1 + i % 4, 1.0) for i, q in enumerate(ids)],
                       columns=["query_id", "doc_id", "rank", "score"])  # fmt: skip
    write_run(run, run_dir, "t")
    score_params = ScoreParams(split="test", measures=["nDCG@10", "MAP"], relevance_level=1, bootstrap_samples=500, seed=0)
    score(score_params, {"prepared": prepared, "run": run_dir}, out)
    rows = [{"variant": "bm25", "method": "bm25", "seed": None, "split": "test", "index": "", "score": "score_0",
             "train": []}]  # fmt: skip
    report_params = ReportParams(rows=rows, reference="", measures=["nDCG@10", "MAP"], bootstrap_samples=500, seed=0)
    table = aggregate(report_params, {"score_0": out})
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for measure in ("nDCG@10", "MAP"):
        assert table.loc[0, f"{measure} ci95"] == tuple(metrics[measure]["ci95"])
        per_query = pd.read_parquet(out / "per_query.parquet")
        assert query_interval([per_query], measure, 500, 0) == tuple(metrics[measure]["ci95"])  # one function


def rng_order(count: int) -> list[int]:
    return list(np.random.default_rng(3).permutation(count))


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # 2 x 0.6, capped; the larger never below the smaller


def test_p_values_at_the_floor_print_as_a_bound():
    floor = p_floor()
    assert floor == pytest.approx(1 / 10001)
    assert p_text(floor, floor) == "p < 1e-4"
    assert p_text(floor, holm([floor, floor, floor])[0]) == "p < 3e-4"  # Holm's bound of three floors
    assert p_text(p_floor(1000), p_floor(1000), samples=1000) == "p < 1e-3"
    assert p_text(0.0123, 0.0246) == "p = 0.025"


def test_table_rules(inputs, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    report(params(), inputs, out)
    lines = (out / "results.md").read_text().splitlines()
    zeroshot = next(line for line in lines if line.startswith("| zeroshot |"))
    star = next(line for line in lines if line.startswith("| star"))
    assert "±" not in zeroshot and "p < 1e-4" in zeroshot  # one seed; the test's floor
    assert star.startswith("| star (reference) | flat | 2 |") and star.count("±") == 1 and "p " not in star
    assert "Holm-corrected" in lines[-1] and "± std over seeds" in lines[-1]
    html = (out / "results.html").read_text()
    assert "<td>star (reference)</td>" in html and "p &lt; 1e-4" in html


def test_one_seed_tables_have_no_std_anywhere(inputs, tmp_path):
    rows = [row for row in params().rows if row["score"] != "score_2"]
    report(params(rows=rows, measures=["nDCG@10", "MAP"]), {**inputs, "score_0": with_map(inputs["score_0"]),
           "score_1": with_map(inputs["score_1"])}, tmp_path)  # fmt: skip
    text = (tmp_path / "results.md").read_text()
    assert "±" not in text and "| MAP |" in text


def with_map(folder):
    frame = pd.read_parquet(folder / "per_query.parquet")
    pd.concat([frame, frame.assign(measure="MAP")]).to_parquet(folder / "per_query.parquet")
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["metrics"]["MAP"] = metrics["metrics"]["nDCG@10"]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_report_writes_table_and_plots(inputs, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    summary = report(params(), inputs, out)
    assert set(summary["plots"]) == {"metrics_by_variant.png", "loss_curves.png", "index_kinds.png"}
    assert all((out / name).stat().st_size > 5000 for name in summary["plots"])
    assert list(pd.read_csv(out / "results.csv")["variant"]) == ["zeroshot", "star"]
    records = json.loads((out / "report.json").read_text())
    star_seeds = [pd.read_parquet(inputs[f"score_{i}"] / "per_query.parquet")["value"].mean() for i in (1, 2)]
    assert records[0]["nDCG@10 std"] is None and records[1]["nDCG@10 by seed"] == pytest.approx(star_seeds)


def test_the_index_kinds_plot_follows_the_registry(inputs, tmp_path, monkeypatch):
    """Drawn when a variant's index kind is lossy (`index_kinds.KINDS`), whatever its name; such variants are named
    by their kind on the axis."""
    from stages.ml import index_kinds
    from stages.report import plots

    table = aggregate(params(), inputs)  # zeroshot on pq, star on flat
    assert plots.variant_labels(table) == {"zeroshot": "zeroshot [PQ]", "star": "star (ref)"}
    assert not plots.plot_index_kinds(table.assign(index="flat"), "nDCG@10", tmp_path / "flat.png")
    third = {"ivfpq": dataclasses.replace(index_kinds.KINDS["pq"], name="ivfpq"),
             "hnsw": dataclasses.replace(index_kinds.KINDS["flat"], name="hnsw")}  # fmt: skip
    monkeypatch.setattr(plots, "KINDS", {**index_kinds.KINDS, **third})
    exact = table.assign(index=table["index"].map({"pq": "hnsw", "flat": "flat"}))
    assert not plots.plot_index_kinds(exact, "nDCG@10", tmp_path / "exact.png")  # no lossy kind: nothing to compare
    lossy = table.assign(index=table["index"].map({"pq": "ivfpq", "flat": "flat"}))
    assert plots.variant_labels(lossy)["zeroshot"] == "zeroshot [IVFPQ]"
    assert plots.plot_index_kinds(lossy, "nDCG@10", tmp_path / "third.png") and (tmp_path / "third.png").is_file()
    assert plots.registry_order(pd.Series(["ivfpq", "flat", "pq", "flat"])) == ["flat", "pq", "ivfpq"]
    assert len({plots.index_color(kind) for kind in ["flat", "pq", "ivfpq", "hnsw"]}) == 4


def test_loss_panels_by_loss_kind_with_train_mrr_and_dev_metrics(inputs, tmp_path):
    from stages.report.plots import plot_losses

    adore = train_artifact(tmp_path / "t3", 5.0, stage="train_adore", train_mrr=[0.1, 0.2, 0.3])
    rows = params().rows + [{"variant": "adore", "method": "adore", "seed": 1, "split": "test", "index": "flat",
                             "score": "score_1", "train": ["train_0", "train_2"]}]  # fmt: skip
    titles = plot_losses(rows, {**inputs, "train_2": adore}, tmp_path / "loss.png")
    assert titles == ["STAR listwise loss", "ADORE LambdaLoss (ΔMRR)", "ADORE train MRR (batch queries)"] + [
        "nDCG@10 on dev"  # only the STAR log has it
    ]
    assert smoothing_window(18) == 1 and smoothing_window(400) == 20


def test_an_unknown_reference_is_named(inputs, tmp_path):
    with pytest.raises(ConfigError, match="'bm25' is not an experiment"):
        report(params(reference="bm25"), inputs, tmp_path)


def stage_artifact(folder, wall_s: float):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"resources": {"wall_s": wall_s}}))
    return folder


def test_the_efficiency_table_and_plot_put_quality_against_gpu_seconds(inputs, tmp_path):
    inputs = {**inputs, "artifact_0": stage_artifact(tmp_path / "e", 3.0), "artifact_1": stage_artifact(tmp_path / "i", 4.0)}
    encode, index = {"input": "artifact_0", "stage": "encode"}, {"input": "artifact_1", "stage": "index"}
    train = [{"input": f"train_{n}", "stage": "train_star", "shared": False} for n in (0, 1)]
    rows = params().rows
    rows[0]["costs"] = [{**encode, "shared": False}, {**index, "shared": False}]
    for row, trained in zip(rows[1:], train):  # seed 1: 10 s of training, seed 2: 14 s; the encode shared
        row["costs"] = [trained, {**encode, "shared": True}, {**index, "shared": False}]
    out = tmp_path / "report"
    out.mkdir()
    summary = report(params(rows=rows, measures=["nDCG@10"]), inputs, out)
    assert "efficiency.png" in summary["plots"] and (out / "efficiency.png").stat().st_size > 5000
    frame = pd.read_csv(out / "efficiency.csv").set_index("variant")
    assert frame.loc["zeroshot", "GPU s total"] == 3.0 and frame.loc["zeroshot", "CPU s"] == 4.0
    assert frame.loc["star", "GPU s train"] == 12.0 and frame.loc["star", "GPU s total"] == 15.0
    assert frame.loc["star", "GPU s shared"] == 3.0 and frame.loc["star", "GPU s total std"] == pytest.approx(8**0.5, rel=1e-5)
    lines = (out / "efficiency.md").read_text().splitlines()
    assert lines[0] == "### efficiency on test"
    assert [line.split(" | ")[0] for line in lines[4:6]] == ["| zeroshot", "| star"]  # by total GPU seconds
    assert "15.0 ± 2.8" in lines[5] and "count in full" in lines[-1]


def test_no_gpu_seconds_no_efficiency_plot(inputs, tmp_path):
    summary = report(params(), inputs, tmp_path)
    assert "efficiency.png" not in summary["plots"] and (tmp_path / "efficiency.md").is_file()


def test_console_summary_lists_each_variant_by_split_with_its_interval(tmp_path):
    from stages.report.table import console_summary

    rows = [
        ("bm25", False, "dev", 0.77, 0.70, 0.84), ("bm25", False, "test", 0.69, 0.64, 0.73),
        ("star", True, "dev", 0.75, 0.68, 0.82), ("star", True, "test", 0.65, float("nan"), float("nan")),
    ]
    pd.DataFrame(rows, columns=["variant", "reference", "split", "nDCG@10", "nDCG@10 ci95 low", "nDCG@10 ci95 high"]).to_csv(
        tmp_path / "results.csv", index=False
    )
    lines = console_summary(tmp_path).splitlines()
    assert lines[2].split() == ["variant", "dev", "test"]
    assert lines[3].split() == ["bm25", "0.7700", "[0.700,", "0.840]", "0.6900", "[0.640,", "0.730]"]
    assert lines[4].split() == ["star", "(reference)", "0.7500", "[0.680,", "0.820]", "0.6500"]
    assert lines[-1].startswith(f"full table: {tmp_path / 'results.md'}")
