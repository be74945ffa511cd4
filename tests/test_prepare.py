"""Stage prepare: normalised tables, dev split, and a clear error (file, line, fix) for every kind of bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from stages.core.errors import DataError
from stages.core.dataset_formats import dataset_files
from stages.prepare import PrepareParams, prepare

PARAMS = dict(format="beir", splits=["train", "test"], dev_fraction=0.0, dev_source="train", seed=1, unknown_ids="error", empty_documents="keep")


def beir(tmp: Path, corpus_lines: list[str], query_lines: list[str], qrels: dict[str, str]) -> Path:
    (tmp / "qrels").mkdir(parents=True, exist_ok=True)
    (tmp / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (tmp / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    for split, text in qrels.items():
        (tmp / "qrels" / f"{split}.tsv").write_text(text)
    return tmp


def doc(i, text="some text", title="t"):
    return json.dumps({"_id": str(i), "title": title, "text": text})


def query(i, text="a question"):
    return json.dumps({"_id": f"q{i}", "text": text})


GOOD_QRELS = {"train": "query-id\tcorpus-id\tscore\nq1\t1\t1\n", "test": "query-id\tcorpus-id\tscore\nq2\t2\t1\n"}


def run_prepare(folder: Path, out: Path, **overrides) -> dict:
    params = PrepareParams(**{**PARAMS, **overrides})
    return prepare(params, dataset_files(folder, params.format, params.splits), out)


def test_good_dataset_is_normalised(tmp_path):
    folder = beir(tmp_path / "d", [doc(1), doc(2), doc(3, title="")], [query(1), query(2), query(3)], GOOD_QRELS)
    out = tmp_path / "out"
    out.mkdir()
    summary = run_prepare(folder, out)
    corpus = pd.read_parquet(out / "corpus.parquet")
    assert list(corpus.columns) == ["doc_id", "title", "text"] and len(corpus) == 3
    queries = pd.read_parquet(out / "queries.parquet")
    assert list(queries.columns) == ["split", "query_id", "text"]
    assert sorted(queries["query_id"]) == ["q1", "q2"]  # q3 has no judgment in any split
    qrels = pd.read_parquet(out / "qrels.parquet")
    assert list(qrels.columns) == ["split", "query_id", "doc_id", "relevance"]
    assert summary["queries"] == {"train": 1, "test": 1}


def test_full_scifact_counts_and_dev_split(tmp_path):
    root = Path(__file__).resolve().parent.parent / "resources" / "scifact"
    out = tmp_path / "out"
    out.mkdir()
    summary = run_prepare(root, out, dev_fraction=0.1)
    assert summary["documents"] == 5183
    assert summary["queries"] == {"train": 728, "dev": 81, "test": 300}
    queries = pd.read_parquet(out / "queries.parquet")
    dev = set(queries.loc[queries["split"] == "dev", "query_id"])
    train = set(queries.loc[queries["split"] == "train", "query_id"])
    assert not dev & train
    qrels = pd.read_parquet(out / "qrels.parquet")
    assert set(qrels.loc[qrels["split"] == "dev", "query_id"]) == dev
    again = tmp_path / "again"
    again.mkdir()
    run_prepare(root, again, dev_fraction=0.1)
    assert pd.read_parquet(again / "queries.parquet").equals(queries)  # seeded: same split every time


def test_msmarco_tsv_layout(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "collection.tsv").write_text("0\tfirst passage\n1\tsecond passage\n")
    for split, qid, pid in (("train", "10", "0"), ("dev", "20", "1")):
        (folder / f"queries.{split}.tsv").write_text(f"{qid}\ta query\n")
        (folder / f"qrels.{split}.tsv").write_text(f"{qid}\t0\t{pid}\t1\n")
    out = tmp_path / "out"
    out.mkdir()
    summary = run_prepare(folder, out, format="msmarco", splits=["train", "dev"])
    assert summary["documents"] == 2 and summary["queries"] == {"train": 1, "dev": 1}


@pytest.mark.parametrize(
    "corpus, queries, qrels, message, line",
    [
        ([doc(1), "{not json", doc(2)], [query(1), query(2)], GOOD_QRELS, "malformed JSON", 2),
        ([doc(1), json.dumps({"title": "x", "text": "y"}), doc(2)], [query(1), query(2)], GOOD_QRELS, "missing field '_id'", 2),
        ([doc(1), doc(2), json.dumps({"_id": "3"})], [query(1), query(2)], GOOD_QRELS, "missing field 'text'", 3),
        ([doc(1), doc(2), doc(1)], [query(1), query(2)], GOOD_QRELS, "duplicate document id '1' (first on line 1)", 3),
        ([doc(1), doc(2)], [query(1), query(2), query(1)], GOOD_QRELS, "duplicate query id 'q1'", 3),
        ([doc(1), doc(2)], [query(1), query(2, text="")], GOOD_QRELS, "query 'q2' has empty text", 2),
        (
            [doc(1), doc(2)],
            [query(1), query(2)],
            {**GOOD_QRELS, "test": "query-id\tcorpus-id\tscore\nq2\t2\t1\nq9\t2\t1\n"},
            "unknown query id 'q9'",
            3,
        ),
        (
            [doc(1), doc(2)],
            [query(1), query(2)],
            {**GOOD_QRELS, "train": "query-id\tcorpus-id\tscore\nq1\t1\t1\nq1\t77\t1\n"},
            "unknown document id '77'",
            3,
        ),
        ([doc(1), doc(2)], [query(1), query(2)], {**GOOD_QRELS, "test": "query-id\tcorpus-id\tscore\nq2\t2\tyes\n"}, "not an integer", 2),
        ([doc(1), doc(2)], [query(1), query(2)], {**GOOD_QRELS, "test": "query-id\tcorpus-id\tscore\nq2 2 1\n"}, "tab-separated", 2),
        (
            [doc(1), doc(2)],
            [query(1), query(2)],
            {**GOOD_QRELS, "test": "query-id\tcorpus-id\tscore\nq2\t2\t0\n"},
            "split 'test' has no query with a positive judgment",
            None,
        ),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, corpus, queries, qrels, message, line):
    folder = beir(tmp_path / "d", corpus, queries, qrels)
    with pytest.raises(DataError) as caught:
        run_prepare(folder, tmp_path)
    assert message in caught.value.message
    assert caught.value.path is not None and Path(caught.value.path).parent.name in {"d", "qrels"}
    assert caught.value.line == line


def test_invalid_utf8_is_reported_with_line(tmp_path):
    folder = beir(tmp_path / "d", [doc(1), doc(2)], [query(1), query(2)], GOOD_QRELS)
    with open(folder / "corpus.jsonl", "ab") as handle:
        handle.write(b'{"_id": "3", "text": "caf\xe9"}\n')
    with pytest.raises(DataError) as caught:
        run_prepare(folder, tmp_path)
    assert "invalid UTF-8" in caught.value.message and caught.value.line == 3


def test_gzipped_corpus_errors_name_the_gz_file(tmp_path):
    folder = beir(tmp_path / "d", [doc(1), doc(2)], [query(1), query(2)], GOOD_QRELS)
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as handle:
        handle.write(doc(1) + "\n{broken\n")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(DataError) as caught:
        run_prepare(folder, tmp_path)
    assert caught.value.path.endswith("corpus.jsonl.gz") and caught.value.line == 2


def test_missing_file_names_it_and_the_config_keys(tmp_path):
    folder = beir(tmp_path / "d", [doc(1)], [query(1)], {"train": GOOD_QRELS["train"]})
    with pytest.raises(DataError) as caught:
        dataset_files(folder, "beir", ["train", "test"])
    assert caught.value.path.endswith("qrels/test.tsv")
    assert "dataset.path" in caught.value.fix


def test_unknown_ids_can_be_dropped_with_a_count(tmp_path, caplog):
    qrels = {**GOOD_QRELS, "train": "query-id\tcorpus-id\tscore\nq1\t1\t1\nq1\t77\t1\nq1\t78\t1\n"}
    folder = beir(tmp_path / "d", [doc(1), doc(2)], [query(1), query(2)], qrels)
    summary = run_prepare(folder, tmp_path, unknown_ids="drop")
    assert summary["dropped"]["train"]["unknown_query_ids"] == 0 and summary["dropped"]["train"]["unknown_doc_ids"] == 2
    assert "dropped 2 judgments" in caplog.text


def test_cli_error_is_one_readable_message_and_leaves_nothing(tmp_path):
    folder = beir(tmp_path / "d", [doc(1), "{oops"], [query(1), query(2)], GOOD_QRELS)
    files = {name: str(path) for name, path in dataset_files(folder, "beir", ["train", "test"]).items()}
    out = tmp_path / "results" / "prepare" / "artifact"
    command = [sys.executable, "-m", "stages.prepare", str(out), "--no-check-key"]
    command += ["--params", json.dumps(PARAMS), "--inputs", json.dumps(files)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{folder / 'corpus.jsonl'}:2: malformed JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not out.parent.exists()  # no half-written artifact, no temp dir, no empty stage folder


def test_warnings_reach_the_end_of_the_run_not_only_the_log(tmp_path, capsys):
    from stages.pipeline import run_plan

    corpus = [doc(1), doc(2), doc(3, text="", title=""), doc(4)]
    folder = beir(tmp_path / "d", corpus, [query(1), query(2)], GOOD_QRELS)
    config = tmp_path / "config.yaml"
    experiments = [{"name": "bm25", "method": "bm25"}]
    config.write_text(json.dumps({"dataset": {"path": str(folder), "dev_fraction": 0.0}, "experiments": experiments}))
    assert run_plan.main(["--configfile", str(config), "--results", str(tmp_path / "results")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: prepare ")]
    assert len(warnings) == 1 and "1 documents with empty text kept" in warnings[0], warnings
    prepared = next((tmp_path / "results" / "prepare").iterdir())
    assert json.loads((prepared / "summary.json").read_text())["warnings"] == [warnings[0].split(": ", 2)[2]]
