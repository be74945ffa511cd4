"""The report stage on hand-made score artifacts: seed means and stds, intervals, p-values, table and plots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stages.errors import ConfigError
from stages.report import ReportParams, aggregate, report


def score_artifact(folder, values: dict[str, list[float]]):
    folder.mkdir(parents=True)
    rows = [(f"q{i}", measure, v) for measure, vs in values.items() for i, v in enumerate(vs)]
    pd.DataFrame(rows, columns=["query_id", "measure", "value"]).to_parquet(folder / "per_query.parquet")
    return folder


def train_artifact(folder, seconds: float):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"seconds": seconds, "device": "cuda"}))
    (folder / "manifest.json").write_text(json.dumps({"stage": "train_star"}))
    pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.6, 0.4]}).to_parquet(folder / "train_log.parquet")
    return folder


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 50)
    return {
        "score_0": score_artifact(tmp_path / "a", {"nDCG@10": base}),
        "score_1": score_artifact(tmp_path / "b1", {"nDCG@10": np.clip(base + 0.2, 0, 1)}),
        "score_2": score_artifact(tmp_path / "b2", {"nDCG@10": np.clip(base + 0.3, 0, 1)}),
        "train_0": train_artifact(tmp_path / "t1", 10.0),
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
    return ReportParams(**{"rows": rows, "reference": "star", "measures": ["nDCG@10"], **changes})


def test_seeds_are_averaged_and_compared_with_the_reference(inputs):
    table = aggregate(params(), inputs).set_index("variant")
    star = [pd.read_parquet(inputs[f"score_{i}"] / "per_query.parquet")["value"].mean() for i in (1, 2)]
    assert table.loc["star", "nDCG@10"] == pytest.approx(np.mean(star))
    assert table.loc["star", "nDCG@10 std"] == pytest.approx(np.std(star, ddof=1))
    assert table.loc["star", "seeds"] == 2 and table.loc["star", "train seconds"] == pytest.approx(12.0)
    low, high = table.loc["star", "nDCG@10 ci95"]
    assert low < table.loc["star", "nDCG@10"] < high
    assert table.loc["zeroshot", "nDCG@10 p"] < 0.001  # 0.25 worse on every query
    assert np.isnan(table.loc["star"].get("nDCG@10 p", np.nan))


def test_report_writes_table_and_plots(inputs, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    summary = report(params(), inputs, out)
    text = (out / "results.md").read_text()
    assert "| star | flat | 2 |" in text and "p=" in text
    assert set(summary["plots"]) == {"metrics_by_variant.png", "loss_curves.png", "index_kinds.png"}
    assert all((out / name).stat().st_size > 5000 for name in summary["plots"])
    assert list(pd.read_csv(out / "results.csv")["variant"]) == ["zeroshot", "star"]


def test_an_unknown_reference_is_named(inputs, tmp_path):
    with pytest.raises(ConfigError, match="'bm25' is not an experiment"):
        report(params(reference="bm25"), inputs, tmp_path)
