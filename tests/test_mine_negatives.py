"""Stage mine_negatives: top-depth of a run minus judged positives, for the judged queries of a split."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from stages.bm25 import Bm25Params, bm25_run
from stages.errors import ConfigError, DataError
from stages.mine_negatives import MineParams, main, mine, read_negatives
from stages.tables import read_qrels, write_run


def fake_run(folder, ranked: dict[str, list[str]]):
    """A run artifact folder from query_id -> doc ids in rank order."""
    rows = [(q, d, r, 100.0 - r) for q, docs in ranked.items() for r, d in enumerate(docs, 1)]
    folder.mkdir()
    write_run(pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"]), folder, tag="fake")
    return folder


@pytest.fixture(scope="module")
def train_qrels(prepared):
    return read_qrels(prepared, "train")


def test_top_depth_minus_positives(prepared, train_qrels, tmp_path):
    first, second, *rest = sorted(train_qrels["query_id"].unique())
    positive = train_qrels.loc[train_qrels["query_id"] == first, "doc_id"].iloc[0]
    run = fake_run(tmp_path / "run", {first: ["x1", positive, "x2", "x3", "x4"], "not-a-train-query": ["x9"]})
    out = tmp_path / "out"
    out.mkdir()
    summary = mine(MineParams(split="train", depth=4), {"prepared": prepared, "run": run}, out)
    negatives = read_negatives(out)
    assert negatives[first] == ["x1", "x2", "x3"]  # rank order, positive removed, x4 beyond depth 4
    assert negatives[second] == [] and set(negatives) == set(train_qrels["query_id"])
    assert summary["queries"] == len(negatives) == summary["queries_without_negatives"] + 1
    assert summary["positives_removed"] == 1 and summary["queries_not_in_run"] == len(negatives) - 1
    assert summary["mean_negatives_per_query"] == pytest.approx(3 / len(negatives), abs=0.01)


def test_keeping_positives(prepared, train_qrels, tmp_path):
    first = sorted(train_qrels["query_id"].unique())[0]
    positive = train_qrels.loc[train_qrels["query_id"] == first, "doc_id"].iloc[0]
    run = fake_run(tmp_path / "run", {first: [positive, "x1"]})
    out = tmp_path / "out"
    out.mkdir()
    summary = mine(MineParams(depth=200, exclude_positives=False), {"prepared": prepared, "run": run}, out)
    assert read_negatives(out)[first] == [positive, "x1"] and summary["positives_removed"] == 0


def test_bm25_negatives_exclude_every_positive(prepared, train_qrels, tmp_path, capsys):
    run = tmp_path / "bm25"
    run.mkdir()
    bm25_run(Bm25Params(split="train", top_k=50), {"prepared": prepared}, run)
    out = tmp_path / "out"
    out.mkdir()
    summary = mine(MineParams(depth=30), {"prepared": prepared, "run": run}, out)
    assert "Hard negative mining summary" in capsys.readouterr().out
    negatives = read_negatives(out)
    bm25 = pd.read_parquet(run / "run.parquet")
    positives = train_qrels[train_qrels["relevance"] >= 1].groupby("query_id")["doc_id"].agg(set)
    for query_id, docs in negatives.items():
        top = bm25[(bm25["query_id"] == query_id) & (bm25["rank"] <= 30)].sort_values("rank")["doc_id"].tolist()
        assert docs == [d for d in top if d not in positives[query_id]]
    assert summary["positives_removed"] > 0 and 25 < summary["mean_negatives_per_query"] <= 30


def test_run_over_another_split_is_an_error(prepared, tmp_path):
    run = fake_run(tmp_path / "run", {"q-unknown": ["d1"]})
    with pytest.raises(DataError, match="answers none"):
        mine(MineParams(), {"prepared": prepared, "run": run}, tmp_path)


def test_cli_writes_artifact_with_summary(prepared, train_qrels, tmp_path):
    first = sorted(train_qrels["query_id"].unique())[0]
    run = fake_run(tmp_path / "run", {first: ["x1", "x2"]})
    out = tmp_path / "results" / "mine_negatives" / "test"
    params = {"split": "train", "depth": 200, "exclude_positives": True, "skip_top": 0}
    inputs = {"prepared": str(prepared), "run": str(run)}
    assert main([str(out), "--params", json.dumps(params), "--inputs", json.dumps(inputs), "--no-check-key"]) == 0
    assert json.loads((out / "summary.json").read_text())["queries_without_negatives"] == len(read_negatives(out)) - 1
    assert json.loads((out / "manifest.json").read_text())["stage"] == "mine_negatives"


def test_skip_top_drops_the_highest_ranks(prepared, train_qrels, tmp_path):
    first = sorted(train_qrels["query_id"].unique())[0]
    run = fake_run(tmp_path / "run", {first: ["x1", "x2", "x3", "x4"]})
    out = tmp_path / "out"
    out.mkdir()
    mine(MineParams(depth=3, skip_top=1), {"prepared": prepared, "run": run}, out)
    assert read_negatives(out)[first] == ["x2", "x3"]
    with pytest.raises(ConfigError, match="skip_top"):
        mine(MineParams(depth=3, skip_top=3), {"prepared": prepared, "run": run}, tmp_path)
