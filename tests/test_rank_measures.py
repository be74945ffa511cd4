"""The registry's measures computed in numpy (`stages.ml.rank_measures`) give exactly ir-measures' values (pytrec_eval,
MS MARCO's RR), on a BM25 run of the real SciFact slice: binary and graded judgments, both relevance levels, the rows
in any order; runs with tied ranks and other measures go to ir-measures; the bootstrap of several measures at once
gives each measure's own interval."""

from __future__ import annotations

import ir_measures
import numpy as np
import pandas as pd
import pytest

from stages.bm25 import Bm25Params, bm25_run
from stages.bm25_index import Bm25IndexParams, build_index
from stages.core import settings
from stages.core.tables import qrels_dict, read_qrels, read_qrels_table, read_run, read_run_table
from stages.ml import measures, rank_measures
from stages.ml.stats import bootstrap_ci, bootstrap_cis

NATIVE = ["nDCG@10", "nDCG@3", "nDCG", "MRR@10", "RR", "R@5", "R@100", "R@1000", "P@1", "P@5", "MAP", "AP@10"]


@pytest.fixture(scope="module")
def bm25_runs(prepared, tmp_path_factory) -> dict[str, object]:
    """BM25 runs (top 100) of the slice's train and test queries, as the bm25 stage writes them."""
    root = tmp_path_factory.mktemp("bm25-runs")
    build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, root)
    runs = {}
    for split in ("train", "test"):
        (root / split).mkdir()
        params = settings.params(Bm25Params, "bm25", split=split, top_k=100)
        bm25_run(params, {"prepared": prepared, "index": root}, root / split)
        runs[split] = root / split
    return runs


def ir_measures_reference(run: pd.DataFrame, qrels: pd.DataFrame, names: list[str], level: int) -> np.ndarray:
    """ir-measures' values (scores minus the ranks), a row a judged query in the qrels' order; 0 where it gives none."""
    ranked: dict[str, dict[str, float]] = {}
    for query_id, doc_id, rank in run[["query_id", "doc_id", "rank"]].itertuples(index=False):
        ranked.setdefault(query_id, {})[doc_id] = -float(rank)
    rows = {query_id: row for row, query_id in enumerate(qrels["query_id"].unique())}
    values = np.zeros((len(rows), len(names)))
    for column, name in enumerate(names):
        for metric in ir_measures.iter_calc([measures.ir_measure(name, level)], qrels_dict(qrels), ranked):
            values[rows[metric.query_id], column] = metric.value
    return values


def graded(qrels: pd.DataFrame, run: pd.DataFrame) -> pd.DataFrame:
    """The judgments with every other one at relevance 2, and each query's second and fifth retrieved documents
    judged 0 where they are not judged."""
    qrels = qrels.assign(relevance=np.where(np.arange(len(qrels)) % 2, 2, qrels["relevance"]))
    extra = run[run["rank"].isin([2, 5])][["query_id", "doc_id"]].assign(relevance=0)
    extra = extra.merge(qrels[["query_id", "doc_id"]], how="left", indicator=True)
    return pd.concat([qrels, extra[extra["_merge"] == "left_only"].drop(columns="_merge")], ignore_index=True)


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("grades", ["binary", "graded"])
def test_numpy_values_are_ir_measures_values(prepared, bm25_runs, split, level, grades):
    qrels = read_qrels(prepared, split)[["query_id", "doc_id", "relevance"]]
    run = read_run(bm25_runs[split])
    if grades == "graded":
        qrels = graded(qrels, run)
    assert all(rank_measures.native(measures.ir_measure(name, level)) for name in NATIVE)
    ids, names, values = measures.evaluate_arrays(read_run_table(bm25_runs[split]), qrels, NATIVE, level)
    assert names == NATIVE and ids.to_pylist() == list(qrels["query_id"].unique())
    reference = ir_measures_reference(run, qrels, NATIVE, level)
    assert (values == reference).all(), {n: np.abs(values - reference).max(axis=0)[i] for i, n in enumerate(names)}
    assert values[:, NATIVE.index("MAP")].mean() > (0.2 if level == 1 or grades == "graded" else -1)
    shuffled = run.sample(frac=1, random_state=3)  # any row order: the ranks give it
    assert (measures.evaluate_arrays(shuffled, qrels, NATIVE, level)[2] == values).all()


def test_unanswered_and_unjudged_queries(prepared, bm25_runs):
    qrels = read_qrels(prepared, "test")
    run = read_run(bm25_runs["test"])
    answered = sorted(run["query_id"].unique())
    run = pd.concat([run[run["query_id"] != answered[0]], run.assign(query_id="not-judged")])
    ids, names, values = measures.evaluate_arrays(run, qrels, NATIVE, 1)
    assert (values == ir_measures_reference(run, qrels, NATIVE, 1)).all()
    assert (values[ids.to_pylist().index(answered[0])] == 0).all()


def test_tied_ranks_and_other_measures_go_to_ir_measures(prepared, bm25_runs, monkeypatch):
    qrels = read_qrels(prepared, "test")
    run = read_run(bm25_runs["test"])
    tied = run.assign(rank=(run["rank"] + 1) // 2)  # two documents at each rank
    columns = measures.run_table(tied)
    judgments = rank_measures.Judgments.of(qrels)
    assert rank_measures.ranked_hits(columns["query_id"], columns["doc_id"], tied["rank"].to_numpy(), judgments) is None
    names = ["nDCG@10", "Judged@10", "P(rel=2)@5", "MAP"]
    assert rank_measures.native(measures.ir_measure("Judged@10")) is None
    for frame in (run, tied):
        values = measures.evaluate_arrays(frame, qrels, names, 1)[2]
        assert (values == ir_measures_reference(frame, qrels, names, 1)).all()


def test_frames_and_tables_give_one_result(prepared, bm25_runs):
    frame = measures.evaluate(read_run(bm25_runs["test"]), read_qrels(prepared, "test"), ["nDCG@10", "MRR@10"], 1)
    table = measures.evaluate(read_run_table(bm25_runs["test"]), read_qrels_table(prepared, "test"), ["nDCG@10", "MRR@10"], 1)
    assert frame.equals(table) and list(frame.columns) == ["query_id", "measure", "value"]
    assert list(frame["measure"][:2]) == ["nDCG@10", "MRR@10"] and frame["query_id"][0] == frame["query_id"][1]


def test_bootstrap_of_several_measures_is_each_ones_own():
    columns = np.random.default_rng(4).random((300, 3))
    together = bootstrap_cis(columns, samples=500, seed=7)
    assert together == [bootstrap_ci(columns[:, i], samples=500, seed=7) for i in range(3)]
