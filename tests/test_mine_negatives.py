"""Stage mine_negatives: top-depth of a run minus judged positives, for the judged queries of a split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.bm25 import Bm25Params, bm25_run
from stages.bm25_index import Bm25IndexParams, build_index
from stages.core import settings
from stages.core.errors import ConfigError, DataError
from stages.mine_negatives import MineParams, main, mine
from stages.core.artifacts import NEGATIVES
from stages.core.tables import NEGATIVES_SCHEMA, read_negatives
from stages.core.tables import RUN_SCHEMA, read_qrels, read_run, write_run, write_table


def mine_params(**fields) -> MineParams:
    """The train split's negatives; else the mine section's defaults."""
    return settings.params(MineParams, "mine", **{"split": "train", **fields})


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
    summary = mine(mine_params(depth=4), {"prepared": prepared, "run": run}, out)
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
    summary = mine(mine_params(depth=200, exclude_positives=False), {"prepared": prepared, "run": run}, out)
    assert read_negatives(out)[first] == [positive, "x1"] and summary["positives_removed"] == 0


def test_bm25_negatives_exclude_every_positive(prepared, train_qrels, tmp_path, capsys):
    run, index = tmp_path / "bm25", tmp_path / "bm25_index"
    run.mkdir()
    index.mkdir()
    build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, index)
    bm25_run(settings.params(Bm25Params, "bm25", split="train", top_k=50), {"prepared": prepared, "index": index}, run)
    out = tmp_path / "out"
    out.mkdir()
    summary = mine(mine_params(depth=30), {"prepared": prepared, "run": run}, out)
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
        mine(mine_params(), {"prepared": prepared, "run": run}, tmp_path)


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
    mine(mine_params(depth=3, skip_top=1), {"prepared": prepared, "run": run}, out)
    assert read_negatives(out)[first] == ["x2", "x3"]
    with pytest.raises(ConfigError, match="skip_top"):
        mine(mine_params(depth=3, skip_top=3), {"prepared": prepared, "run": run}, tmp_path)


def reference_mine(params: MineParams, prepared, run_dir, out_dir) -> dict:
    """`mine` as it was before it streamed the run as Arrow (pandas groupby and Python lists)."""
    qrels = read_qrels(prepared, params.split)
    positives = qrels[qrels["relevance"] >= 1].groupby("query_id")["doc_id"].agg(set).to_dict()
    judged = sorted(qrels["query_id"].unique())
    run = read_run(run_dir)
    answered = set(run["query_id"]) & set(judged)
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
    write_table(negatives, out_dir / NEGATIVES, NEGATIVES_SCHEMA)
    counts = negatives["doc_ids"].map(len)
    return {
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
        "items": {"queries": len(negatives)},
    }


def awkward_run(folder, qrels: pd.DataFrame, shuffled: bool):
    """A run over most judged queries and some others: tied scores, positives at every depth, documents repeated
    across queries, some queries whose window holds only positives; in (query_id, rank) order or shuffled."""
    rng = np.random.default_rng(7)
    judged = sorted(qrels["query_id"].unique())
    positives = qrels[qrels["relevance"] >= 1].groupby("query_id")["doc_id"].agg(list).to_dict()
    other_positives = [d for docs in positives.values() for d in docs]
    rows = []
    for number, query_id in enumerate([*judged[3:], "not-judged-1", "not-judged-2"]):
        docs = [f"d{rng.integers(300)}" for _ in range(int(rng.integers(1, 30)))]
        for doc in positives.get(query_id, [])[:2]:
            docs.insert(int(rng.integers(len(docs) + 1)), doc)  # its own positives somewhere in the ranking
        docs.insert(int(rng.integers(len(docs) + 1)), other_positives[number % len(other_positives)])
        if number % 5 == 0:
            docs = positives.get(query_id, docs)[:1] + docs[:1]  # a short list, maybe only a positive
        scores = np.round(rng.normal(size=len(docs)), 1)  # ties
        rows += [(query_id, d, r, float(s)) for r, (d, s) in enumerate(zip(docs, -np.sort(-scores)), 1)]
    frame = pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"])
    folder.mkdir()
    if shuffled:  # not the order write_run gives: mining sorts
        frame = frame.sample(frac=1.0, random_state=3)
        pq.write_table(pa.Table.from_pandas(frame, RUN_SCHEMA, preserve_index=False), folder / "run.parquet")
    else:
        write_run(frame, folder, tag="awkward")
    return folder


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize(
    "params",
    [mine_params(), mine_params(depth=10), mine_params(depth=12, skip_top=3), mine_params(exclude_positives=False)],
    ids=["paper", "depth-10", "skip-top", "keep-positives"],
)
def test_same_negatives_and_summary_as_the_reference(prepared, train_qrels, tmp_path, monkeypatch, params, shuffled):
    run = awkward_run(tmp_path / "run", train_qrels, shuffled)
    monkeypatch.setattr("stages.mine_negatives.BATCH_ROWS", 37)  # many batches
    for name in ("new", "old"):
        (tmp_path / name).mkdir()
    summary = mine(params, {"prepared": prepared, "run": run}, tmp_path / "new")
    expected = reference_mine(params, prepared, run, tmp_path / "old")
    assert summary == expected
    assert summary["queries_not_in_run"] == 3 and summary["queries_without_negatives"] >= 3
    assert params.exclude_positives is False or summary["positives_removed"] > 0
    assert pq.read_table(tmp_path / "new" / NEGATIVES).equals(pq.read_table(tmp_path / "old" / NEGATIVES))
