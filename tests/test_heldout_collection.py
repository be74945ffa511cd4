"""A held-out collection in Cranfield's shape, run through the DAG without editing it: empty documents (one of them
judged), graded judgments with a non-relevant grade, a qrels file without a header and with float scores, a BOM."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import yaml

from stages.pipeline import run_plan

SCIFACT = Path(__file__).resolve().parent.parent / "resources" / "scifact"


def cranfield_like(folder: Path) -> None:
    """60 real abstracts and 2 empty documents; 6 test queries taken from the abstracts' titles, graded 1-3,
    with the empty document 'empty-1' judged 2 for the first query; 12 train queries the same way."""
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as handle:
        docs = [json.loads(next(handle)) for _ in range(60)]
    (folder / "qrels").mkdir(parents=True)
    records = [{"_id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs]
    records += [{"_id": "empty-1", "title": "", "text": ""}, {"_id": "empty-2", "title": "", "text": "   "}]
    (folder / "corpus.jsonl").write_text("\ufeff" + "\n".join(json.dumps(r) for r in records) + "\n")
    queries, qrels = [], {"train": [], "test": []}
    for number, doc in enumerate(docs[:18]):
        split = "test" if number < 6 else "train"
        queries.append({"_id": str(number + 1), "text": doc["title"]})
        qrels[split].append(f"{number + 1}\t{doc['_id']}\t{3 - number % 3}.0")  # graded, float-formatted
        qrels[split].append(f"{number + 1}\t{docs[(number + 30) % 60]['_id']}\t0")
    qrels["test"].append("1\tempty-1\t2")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    for split, lines in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")  # no header


def test_cranfield_shaped_collection_runs_unedited(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    cranfield_like(data)
    config = {
        "dataset": {"path": str(data), "splits": ["train", "test"], "dev_fraction": 0},
        "evaluate": {"splits": ["test"]},
        "encoder": {"model": str(tiny_model_dir)},
        "encode": {"num_shards": 1},
        "score": {"bootstrap_samples": 100},
        "experiments": [{"name": "bm25", "method": "bm25"}, {"name": "zeroshot", "method": "zeroshot"}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    assert run_plan.main(["--configfile", str(tmp_path / "config.yaml"), "--results", str(results)]) == 0

    prepared = results / "runs" / "bm25" / "prepare"
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["documents"] == 62 and summary["empty_documents"] == 2
    qrels = pd.read_parquet(prepared / "qrels.parquet")
    test = qrels[qrels["split"] == "test"]
    assert len(test) == 13  # the first line (no header, float score) is a judgment, not a header
    assert sorted(test["relevance"].unique()) == [0, 1, 2, 3]
    assert not any(d.startswith("\ufeff") for d in pd.read_parquet(prepared / "corpus.parquet")["doc_id"])

    dense = pd.read_parquet(results / "runs" / "zeroshot" / "retrieve-test" / "run.parquet")
    assert "empty-1" in set(dense["doc_id"])  # kept: it has an embedding and can be retrieved
    for name in ("bm25", "zeroshot"):
        metrics = json.loads((results / "runs" / name / "score-test" / "metrics.json").read_text())
        assert metrics["queries"] == 6
        assert 0 < metrics["metrics"]["nDCG@10"]["mean"] <= 1
    bm25 = json.loads((results / "runs" / "bm25" / "score-test" / "metrics.json").read_text())["metrics"]
    assert bm25["MRR@10"]["mean"] > 0.5  # titles find their own abstracts
