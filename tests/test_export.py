"""The exported retriever loads with sentence-transformers and gives the pipeline's embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from stages.export import DOCUMENT_ENCODER, QUERY_ENCODER, ExportParams, export
from stages.ml.models import MODEL_SUBDIR, load_encoder, save_encoder

sentence_transformers = pytest.importorskip("sentence_transformers")
TEXTS = ["dense retrieval with hard negatives", "a second, somewhat longer sentence about scientific claims"]


def test_export_loads_with_sentence_transformers_and_matches(tiny_model_dir, tmp_path):
    documents, queries = tmp_path / "star", tmp_path / "adore"
    save_encoder(load_encoder(tiny_model_dir, pooling="mean", normalize=True), documents / MODEL_SUBDIR)
    tuned = load_encoder(tiny_model_dir, pooling="mean", normalize=True)
    with __import__("torch").no_grad():
        tuned.model.embeddings.word_embeddings.weight.mul_(1.5)  # a different query encoder, as ADORE's
    save_encoder(tuned, queries / MODEL_SUBDIR)
    out = tmp_path / "export"
    out.mkdir()
    summary = export(ExportParams(doc_max_length=64, query_max_length=16), {"documents": documents, "queries": queries}, out)
    assert summary["separate_query_encoder"] and "SentenceTransformer" in (out / "README.md").read_text()
    for folder, source, length in ((DOCUMENT_ENCODER, documents, 64), (QUERY_ENCODER, queries, 16)):
        model = sentence_transformers.SentenceTransformer(str(out / folder), device="cpu")
        assert model.max_seq_length == length
        ours = load_encoder(source / MODEL_SUBDIR).encode(TEXTS, length, progress=False)
        np.testing.assert_allclose(model.encode(TEXTS), ours, atol=1e-5)
