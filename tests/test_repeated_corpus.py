"""The benchmarks' large corpus (SciFact's documents repeated) is a valid dataset for the pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from helpers import prepare_params
from stages.core.dataset_formats import dataset_files
from stages.prepare import prepare

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from repeated_corpus import write_repeated  # noqa: E402


def test_repeated_corpus_prepares_with_unique_ids_and_every_judgment_resolved(tmp_path):
    write_repeated(12000, tmp_path / "data")  # SciFact has 5,183 documents: two full copies and part of a third
    root = tmp_path / "data"
    (tmp_path / "out").mkdir()
    prepare(prepare_params(), dataset_files(root, "beir", ["train", "test"]), tmp_path / "out")
    corpus = pd.read_parquet(tmp_path / "out" / "corpus.parquet")
    assert len(corpus) == 12000 and corpus["doc_id"].is_unique
    assert corpus["doc_id"].str.endswith("-r2").sum() == 12000 - 2 * 5183
    qrels = pd.read_parquet(tmp_path / "out" / "qrels.parquet")
    assert qrels["doc_id"].isin(corpus["doc_id"]).all() and not qrels["doc_id"].str.contains("-r").any()
