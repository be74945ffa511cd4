"""stages.ml.models: loading (dtype, pooling detection), encoding (order, determinism), saving (sentence-transformers)."""

from __future__ import annotations

import itertools

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stages.core.errors import ConfigError
from stages.ml.models import Encoder, document_texts, load_encoder, resolve_model, save_encoder

TEXTS = [
    "Vitamin D deficiency and multiple sclerosis.",
    "0-dimensional biomaterials show inductive properties. " * 60,  # longer than 256 tokens: truncated
    "x",
    "A small-molecule inhibitor of the kinase reduced tumour growth in mice, but not in the human xenograft model.",
    "   leading and trailing spaces   ",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> Encoder:
    return load_encoder(tiny_model_dir)


def test_resolve_model_names_and_folders(tmp_path, monkeypatch):
    import huggingface_hub.constants

    bundled = Path(resolve_model("bundled"))
    assert (bundled / "model.safetensors").is_file() and (bundled / "modules.json").is_file()
    assert resolve_model("all-MiniLM-L6-v2") == str(bundled)
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        resolve_model(str(tmp_path / "missing"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="not a Hugging Face Hub model in the local cache"):
        resolve_model("some-org/some-model")  # a Hub id is only ever read from the cache (test_config_errors.py)


def test_local_folder_without_weights_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the model folder"):
        load_encoder(tmp_path)


def test_hub_id_that_is_not_cached_is_a_config_error_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # any network use would fail
    with pytest.raises(ConfigError, match="stages never download"):
        load_encoder("some-org/some-model")


def test_bundled_minilm_matches_sentence_transformers():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    encoder = load_encoder("bundled")
    assert (encoder.pooling, encoder.normalize) == ("mean", True)
    ours = encoder.encode(TEXTS, max_length=256, batch_size=2, progress=False)
    reference = sentence_transformers.SentenceTransformer(resolve_model("bundled"), device="cpu").encode(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_encode_returns_rows_in_input_order_and_is_deterministic(tiny):
    batched = tiny.encode(TEXTS, max_length=64, batch_size=2, progress=False)
    one_by_one = np.stack([tiny.encode([text], max_length=64, progress=False)[0] for text in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert np.array_equal(batched, tiny.encode(TEXTS, max_length=64, batch_size=2, progress=False))
    # distinct texts give distinct rows, so a permutation bug could not hide behind equal vectors
    assert np.abs(batched[0] - batched[2]).max() > 1e-3


def test_token_lengths_are_truncated_and_count_special_tokens(tiny):
    lengths = tiny.token_lengths(TEXTS, max_length=32)
    assert lengths[1] == 32 and lengths[2] == 3  # [CLS] x [SEP]
    assert tiny.tokenize(TEXTS, max_length=32)["input_ids"].shape == (len(TEXTS), 32)


def test_forward_is_float32_under_autocast_and_pools_as_asked(tiny_model_dir):
    cls = load_encoder(tiny_model_dir, pooling="cls", normalize=True)
    batch = cls.tokenize(TEXTS[:2], max_length=16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = cls(batch["input_ids"], batch["attention_mask"])
    assert output.dtype == torch.float32 and output.shape == (2, 32)
    torch.testing.assert_close(output.norm(dim=1), torch.ones(2), atol=1e-3, rtol=0)
    with torch.inference_mode():
        hidden = cls.model(**batch).last_hidden_state
        plain = load_encoder(tiny_model_dir, pooling="mean", normalize="false")(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(plain, (hidden * mask).sum(1) / mask.sum(1))


def test_fp16_checkpoint_loads_with_float32_parameters(tiny_model_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    half = AutoModel.from_pretrained(tiny_model_dir, dtype=torch.float16)
    assert next(half.parameters()).dtype == torch.float16
    half.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    encoder = load_encoder(tmp_path)
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    assert encoder.encode(["fp16 weights"], 16, progress=False).dtype == np.float32


@pytest.mark.parametrize("pooling,normalize", [("cls", True), ("mean", False)])
def test_saved_encoder_gives_the_same_embeddings_in_sentence_transformers(tiny_model_dir, tmp_path, pooling, normalize):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    encoder = load_encoder(tiny_model_dir, pooling=pooling, normalize=normalize)
    save_encoder(encoder, tmp_path / "saved", max_seq_length=128)
    saved = tmp_path / "saved"
    assert (saved / "model.safetensors").is_file() and (saved / "encoder.json").is_file()
    assert not [p for p in saved.rglob("*") if p.suffix in {".bin", ".pt", ".pkl", ".pth"}]

    reloaded = load_encoder(saved)  # 'auto' reads encoder.json
    assert (reloaded.pooling, reloaded.normalize) == (pooling, normalize)
    ours = encoder.encode(TEXTS, 128, progress=False)
    np.testing.assert_allclose(reloaded.encode(TEXTS, 128, progress=False), ours, atol=1e-6)

    model = sentence_transformers.SentenceTransformer(str(saved), device="cpu")
    assert model.max_seq_length == 128
    np.testing.assert_allclose(model.encode(TEXTS), ours, atol=1e-5)


def test_sentence_transformers_files_decide_auto_head(tiny_model_dir, tmp_path):
    encoder = load_encoder(tiny_model_dir, pooling="cls", normalize=True)
    save_encoder(encoder, tmp_path)
    (tmp_path / "encoder.json").unlink()  # only the sentence-transformers files remain
    reloaded = load_encoder(tmp_path)
    assert (reloaded.pooling, reloaded.normalize) == ("cls", True)
    plain = load_encoder(tiny_model_dir)  # no head files at all
    assert (plain.pooling, plain.normalize) == ("mean", False)


def test_unknown_pooling_and_normalize_are_config_errors(tiny_model_dir):
    with pytest.raises(ConfigError, match="pooling"):
        load_encoder(tiny_model_dir, pooling="max")
    with pytest.raises(ConfigError, match="normalize"):
        load_encoder(tiny_model_dir, normalize="maybe")


def test_document_texts_join_title_and_text():
    corpus = pd.DataFrame({"doc_id": ["a", "b"], "title": ["Title", ""], "text": ["body text", " only text "]})
    assert document_texts(corpus) == ["Title body text", "only text"]


def test_token_cache_gives_what_tokenize_gives(tiny_model_dir):
    """Texts tokenized once and gathered by row, or tokenized on the spot (texts it has not seen, another max
    length), the ids and masks are Encoder.tokenize's."""
    from stages.ml.models import TokenCache, load_encoder, token_chunk

    encoder = load_encoder(tiny_model_dir)
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing".split()
    texts = [" ".join(words[: 1 + (i * 7) % len(words)] * (1 + i % 4)) for i in range(200)] + ["  padded  "]
    cache = TokenCache(encoder.tokenizer)
    assert cache.add(texts[:150], 64) == len(set(texts[:150]))
    assert cache.add(texts, 64) == len(set(texts)) - len(set(texts[:150]))  # only the new ones
    read = TokenCache(encoder.tokenizer)  # filled from ids made elsewhere (a tokenize artifact), repeats included
    flat, lengths = token_chunk(encoder.tokenizer, texts[:120] + texts[:5], 64)
    assert read.add_tokenized(texts[:120] + texts[:5], flat, np.concatenate([[0], np.cumsum(lengths)]), 64) == len(
        set(texts[:120])
    )
    assert read.add(texts, 64) == len(set(texts)) - len(set(texts[:120]))
    batches = [(texts[::-1], 64), (texts[:3] + texts[:3], 64), (texts + ["never seen"], 64), (texts, 8), ([], 64)]
    for (batch, max_length), source in itertools.product(batches, (cache, read)):
        got, expected = source(batch, max_length), (encoder.tokenize(batch, max_length) if batch else None)
        assert set(got) == {"input_ids", "attention_mask"}
        if expected is None:
            assert got["input_ids"].shape == (0, 0)
            continue
        for key in got:
            assert torch.equal(got[key], expected[key]), (key, max_length)
