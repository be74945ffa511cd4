"""Stage bm25 on the slice and on the full embedded SciFact (reference: nDCG@10 0.686 with bm25s 0.3.16)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stages.bm25 import Bm25Params, bm25_run
from stages.prepare import PrepareParams, dataset_files, prepare
from stages.score import evaluate
from stages.tables import read_qrels

SCIFACT = Path(__file__).resolve().parent.parent / "resources" / "scifact"


def test_run_format_on_the_slice(prepared, tmp_path):
    summary = bm25_run(Bm25Params(split="test", top_k=50), {"prepared": prepared}, tmp_path)
    run = pd.read_parquet(tmp_path / "run.parquet")
    assert list(run.columns) == ["query_id", "doc_id", "rank", "score"]
    assert summary["queries"] == run["query_id"].nunique() == 20
    for _, ranked in run.groupby("query_id"):
        assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
        assert ranked["score"].is_monotonic_decreasing and (ranked["score"] > 0).all()
    first = (tmp_path / "run.trec").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "bm25"


def test_full_scifact_matches_the_reference(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    params = PrepareParams(dev_fraction=0.1)
    prepare(params, dataset_files(SCIFACT, "beir", params.splits), prepared)
    run_dir = tmp_path / "bm25"
    run_dir.mkdir()
    bm25_run(Bm25Params(split="test"), {"prepared": prepared}, run_dir)
    per_query = evaluate(pd.read_parquet(run_dir / "run.parquet"), read_qrels(prepared, "test"), ["nDCG@10"], 1)
    assert per_query["value"].mean() == pytest.approx(0.686, abs=0.005)
