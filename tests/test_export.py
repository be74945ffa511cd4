"""The exported retriever is one sentence-transformers model whose query and document routes give the pipeline's
embeddings, with a model card; its ONNX files agree with it; push_to_hub sends the model and nothing else."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from stages.core import settings
from stages.export.stage import ExportParams, export, push_to_hub, upload_files
from stages.export.card import CITATION, measure_type
from stages.ml.models import document_texts, load_encoder, save_encoder
from stages.core.artifacts import MODEL_SUBDIR

sentence_transformers = pytest.importorskip("sentence_transformers")
SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
QUERIES = ["dense retrieval with hard negatives", "a long claim " + "about vitamin c and scurvy " * 6]
CORPUS = pd.DataFrame(
    {
        "title": ["Vitamin C deficiency", "", None],
        "text": ["Scurvy follows a lack of ascorbic acid in the diet.", "A text without a title.", "No title either."],
    }
)
# the card's rule for title + text
DOCUMENTS = [(title + " " + text).strip() for title, text in zip(CORPUS["title"].fillna(""), CORPUS["text"])]
ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript"))  # the onnx extra
PARAMS = settings.params(ExportParams, "export", "encoder", name="adore-star", method="adore", seed=3,
                         doc_max_length=64, query_max_length=16, dataset="scifact")


def training_artifact(folder: Path, encoder, stage: str) -> Path:
    save_encoder(encoder, folder / MODEL_SUBDIR)
    (folder / "manifest.json").write_text(json.dumps({"stage": stage, "params": {"epochs": 1, "stage": stage}}))
    return folder


def score_artifact(folder: Path, split: str, ndcg: float) -> Path:
    folder.mkdir()
    metrics = {"nDCG@10": {"mean": ndcg, "ci95": [ndcg - 0.1, ndcg + 0.1]}, "R@100": {"mean": 0.9, "ci95": [0.8, 1.0]}}
    (folder / "metrics.json").write_text(json.dumps({"split": split, "queries": 30, "metrics": metrics}))
    return folder


@pytest.fixture(scope="module")
def adore_inputs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """A STAR document encoder, an ADORE query encoder (other weights, as ADORE's), and dev/test scores."""
    root = tmp_path_factory.mktemp("trained")
    star = load_encoder(tiny_model_dir, pooling="mean", normalize=True)
    documents = training_artifact(root / "star", star, "train_star")
    tuned = load_encoder(tiny_model_dir, pooling="mean", normalize=True)
    with torch.no_grad():
        tuned.model.embeddings.word_embeddings.weight.mul_(1.5)
    queries = training_artifact(root / "adore", tuned, "train_adore")
    scores = {f"score_{split}": score_artifact(root / split, split, v) for split, v in (("dev", 0.61), ("test", 0.57))}
    return {"documents": documents, "queries": queries, **scores}


@pytest.fixture(scope="module")
def exported(adore_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    summary = export(dataclasses.replace(PARAMS, onnx=ONNX), adore_inputs, out)
    assert summary["separate_query_encoder"]
    return out


def assert_same_embeddings(ours: np.ndarray, theirs: np.ndarray) -> None:
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.9999999
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_one_model_reproduces_the_pipelines_query_and_document_embeddings(exported, adore_inputs):
    model = sentence_transformers.SentenceTransformer(str(exported), device="cpu")
    assert DOCUMENTS == document_texts(CORPUS)  # the card's title + text rule is the pipeline's
    query_encoder = load_encoder(adore_inputs["queries"] / MODEL_SUBDIR)
    document_encoder = load_encoder(adore_inputs["documents"] / MODEL_SUBDIR)
    assert query_encoder.tokenize(QUERIES[1:], 1000)["input_ids"].shape[1] > 16  # the long query is truncated
    assert_same_embeddings(query_encoder.encode(QUERIES, 16, progress=False), model.encode_query(QUERIES))
    pipeline_documents = document_encoder.encode(document_texts(CORPUS), 64, progress=False)
    assert_same_embeddings(pipeline_documents, model.encode_document(DOCUMENTS))
    assert not np.allclose(model.encode_query(QUERIES[:1]), model.encode_document(QUERIES[:1]), atol=1e-3)  # two routes
    settings = json.loads((exported / "config_sentence_transformers.json").read_text())
    assert settings["similarity_fn_name"] == "dot" and settings["model_type"] == "SentenceTransformer"


def test_the_card_carries_metadata_metrics_config_citation_and_usage(exported):
    card = (exported / "README.md").read_text()
    front, body = card.removeprefix("---\n").split("\n---\n", 1)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["BeIR/scifact"] and meta["training_data_license"] == "cc-by-nc-2.0"
    results = {r["dataset"]["split"]: r["metrics"] for r in meta["model-index"][0]["results"]}
    assert results["dev"][0] == {"type": "ndcg_at_10", "value": 0.61, "name": "nDCG@10"}
    assert results["test"][1]["type"] == "recall_at_100"
    assert meta["hardneg"]["seed"] == 3 and meta["hardneg"]["export"]["query_max_length"] == 16
    assert meta["hardneg"]["stages"] == {s: {"epochs": 1, "stage": s} for s in ("train_star", "train_adore")}
    assert "| test | 3 | 30 | 0.5700 [0.470, 0.670]" in body
    assert "model.encode_query(" in body and "model.encode_document(" in body and 'title + " " + text' in body
    assert CITATION in body and "zhan2021optimizing" in CITATION and ("onnx/query.onnx" in body) == ONNX


def test_onnx_files_give_the_pytorch_embeddings(exported, adore_inputs):
    ort = pytest.importorskip("onnxruntime")
    if not ONNX:
        pytest.skip("the onnx extra (onnx, onnxscript) is not installed")
    texts = ["short", "a somewhat longer text about claims, evidence and the retrieval of abstracts " * 3]
    for route, source, length in (("query", "queries", 16), ("document", "documents", 64)):
        encoder = load_encoder(adore_inputs[source] / MODEL_SUBDIR)
        batch = encoder.tokenize(texts, length)
        session = ort.InferenceSession(str(exported / "onnx" / f"{route}.onnx"), providers=["CPUExecutionProvider"])
        (embeddings,) = session.run(None, {name: batch[name].numpy() for name in ("input_ids", "attention_mask")})
        np.testing.assert_allclose(embeddings, encoder.encode(texts, length, progress=False), atol=1e-5)


def test_a_shared_encoder_has_both_routes_and_truncates_each(tiny_model_dir, tmp_path):
    encoder = load_encoder(tiny_model_dir, pooling="cls", normalize=False)
    documents = training_artifact(tmp_path / "star", encoder, "train_star")
    out = tmp_path / "export"
    out.mkdir()
    summary = export(dataclasses.replace(PARAMS, method="star", dataset="mydata"), {"documents": documents}, out)
    model = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    assert not summary["separate_query_encoder"] and not (out / "onnx").exists()
    assert_same_embeddings(encoder.encode(QUERIES, 16, progress=False), model.encode_query(QUERIES))
    assert_same_embeddings(encoder.encode(QUERIES, 64, progress=False), model.encode_document(QUERIES))
    meta = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert meta["training_data_license"] == "unknown" and meta["model-index"][0]["results"] == []


def test_push_to_hub_uploads_the_model_folder_without_the_artifacts_records(exported):
    calls = []

    class FakeApi:  # records what would go over the network
        def create_repo(self, repo_id, **options):
            calls.append(("create_repo", repo_id, options))

        def upload_folder(self, **options):
            calls.append(("upload_folder", options))

    (exported / "manifest.json").write_text("{}")  # as the artifact store adds it
    files = push_to_hub(exported, "someone/adore-star", api=FakeApi())
    assert files == upload_files(exported) and "manifest.json" not in files
    assert {"README.md", "modules.json", "router_config.json", "config_sentence_transformers.json"} <= set(files)
    assert ("onnx/query.onnx" in files) == ONNX and any(f.startswith("query_0_Transformer/") for f in files)
    assert calls[0][:2] == ("create_repo", "someone/adore-star")
    assert calls[1][1]["folder_path"] == str(exported) and calls[1][1]["allow_patterns"] == files
    (exported / "manifest.json").unlink()


def test_measure_names_follow_the_hub():
    names = [measure_type(m) for m in ("nDCG@10", "MRR@10", "R@1000", "MAP")]
    assert names == ["ndcg_at_10", "mrr_at_10", "recall_at_1000", "map"]


def test_onnx_without_its_packages_says_how_to_install_them(tiny_model_dir, tmp_path, monkeypatch):
    from stages.core.errors import ConfigError
    from stages.export.stage import export_onnx

    def missing(*args, **options):
        raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")

    monkeypatch.setattr(torch.onnx, "export", missing)
    with pytest.raises(ConfigError, match="onnxscript") as error:
        export_onnx(load_encoder(tiny_model_dir), tmp_path / "query.onnx", 16)
    assert "hardneg[onnx]" in error.value.render()
