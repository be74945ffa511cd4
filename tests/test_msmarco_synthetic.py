"""The MS MARCO-shaped synthetic dataset: its shape, both layouts, determinism; the pipeline's `prepare` reads it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import prepare_params
from stages.core.dataset_formats import dataset_files
from stages.prepare import prepare

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from msmarco_synthetic import generate  # noqa: E402

SIZE = {"passages": 2000, "train": 200, "dev": 50}


def tsv(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def msmarco(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("msmarco")
    return out, generate(out, **SIZE, seed=3)


def test_shape_of_passages_queries_and_judgments(msmarco):
    out, stats = msmarco
    collection = tsv(out / "collection.tsv")
    assert [int(pid) for pid, _ in collection] == list(range(SIZE["passages"]))
    words = pd.Series([len(text.split()) for _, text in collection])
    assert 50 <= words.mean() <= 62 and words.min() >= 4 and words.std() > 15  # MS MARCO: mean ~56, right-skewed
    assert stats["mean_passage_words"] == pytest.approx(words.mean(), abs=0.01)
    pids, qids = {pid for pid, _ in collection}, set()
    for split in ("train", "dev"):
        queries, qrels = tsv(out / f"queries.{split}.tsv"), tsv(out / f"qrels.{split}.tsv")
        assert len(queries) == SIZE[split] and not qids & {q for q, _ in queries}
        qids |= {q for q, _ in queries}
        assert all(len(row) == 4 and row[1] == "0" and row[3] == "1" for row in qrels)  # TREC: qid 0 pid 1
        assert {row[2] for row in qrels} <= pids and {row[0] for row in qrels} == {q for q, _ in queries}
    assert len(qids) == SIZE["train"] + SIZE["dev"]
    assert 4.5 <= stats["mean_query_words"] <= 7.5 and 1.0 <= stats["judged_per_query"] <= 1.25


def test_queries_are_lifted_from_their_judged_passage(msmarco):
    out, _ = msmarco
    texts = {pid: text.lower() for pid, text in tsv(out / "collection.tsv")}
    queries = dict(tsv(out / "queries.train.tsv"))
    first = {}
    for qid, _, pid, _ in tsv(out / "qrels.train.tsv"):
        first.setdefault(qid, pid)
    for qid, text in queries.items():  # every word of every query is in its (first) judged passage
        assert all(word in texts[first[qid]] for word in text.split()), (text, texts[first[qid]])


def test_same_seed_same_bytes_other_seed_other_data(msmarco, tmp_path):
    out, _ = msmarco
    generate(tmp_path / "again", **SIZE, seed=3)
    generate(tmp_path / "other", **SIZE, seed=4)
    for name in ("collection.tsv", "queries.train.tsv", "queries.dev.tsv", "qrels.train.tsv", "qrels.dev.tsv"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    assert (tmp_path / "other" / "collection.tsv").read_bytes() != (out / "collection.tsv").read_bytes()


def test_beir_layout_holds_the_same_data(msmarco, tmp_path):
    out, _ = msmarco
    generate(tmp_path / "beir", **SIZE, seed=3, layout="beir")
    corpus = [json.loads(line) for line in (tmp_path / "beir" / "corpus.jsonl").read_text().splitlines()]
    assert [[d["_id"], d["text"]] for d in corpus] == tsv(out / "collection.tsv")
    assert all(d["title"] == "" for d in corpus)
    queries = [json.loads(line) for line in (tmp_path / "beir" / "queries.jsonl").read_text().splitlines()]
    assert [[q["_id"], q["text"]] for q in queries] == tsv(out / "queries.train.tsv") + tsv(out / "queries.dev.tsv")
    for split in ("train", "dev"):
        lines = tsv(tmp_path / "beir" / "qrels" / f"{split}.tsv")
        assert lines[0] == ["query-id", "corpus-id", "score"]
        assert lines[1:] == [[q, p, r] for q, _, p, r in tsv(out / f"qrels.{split}.tsv")]


@pytest.mark.parametrize("layout", ["msmarco", "beir"])
def test_prepare_reads_it_with_train_and_dev_splits(msmarco, tmp_path, layout):
    root = msmarco[0]
    if layout == "beir":
        root = tmp_path / "beir"
        generate(root, **SIZE, seed=3, layout="beir")
    (tmp_path / "out").mkdir()
    params = prepare_params(format=layout, splits=["train", "dev"], dev_fraction=0.0)
    prepare(params, dataset_files(root, layout, ["train", "dev"]), tmp_path / "out")
    corpus = pd.read_parquet(tmp_path / "out" / "corpus.parquet")
    queries = pd.read_parquet(tmp_path / "out" / "queries.parquet")
    qrels = pd.read_parquet(tmp_path / "out" / "qrels.parquet")
    assert len(corpus) == SIZE["passages"] and corpus["doc_id"].is_unique
    assert queries["split"].value_counts().to_dict() == {"train": SIZE["train"], "dev": SIZE["dev"]}
    assert qrels["doc_id"].isin(corpus["doc_id"]).all() and (qrels["relevance"] == 1).all()
