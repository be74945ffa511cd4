"""stages.packed: padding-free encoding gives the padded encoding's embeddings, and leaves the model as it was."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import stages.packed
from stages.models import Encoder, load_encoder, load_tokenizer, token_chunk

TEXTS = [
    "Vitamin D deficiency and multiple sclerosis.",
    "0-dimensional biomaterials show inductive properties. " * 20,
    "x",
    "A small-molecule inhibitor of the kinase reduced tumour growth in mice.",
    "Cohort study of 2,000 adults.",
    "Statins lower LDL cholesterol " * 5,
    "y z",
]


def chunks_of(encoder: Encoder, texts: list[str], size: int, max_length: int = 64):
    return [(s, *token_chunk(encoder.tokenizer, texts[s : s + size], max_length)) for s in range(0, len(texts), size)]


def both_ways(encoder: Encoder, monkeypatch, texts=TEXTS, **options) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings packed (forced, also on CPU: the padding reference attention) and padded."""
    chunks = chunks_of(encoder, texts, size=5)
    with monkeypatch.context() as patch:
        patch.setattr(stages.packed, "packing_pays", lambda model, dtype: True)
        packed, lengths = encoder.encode_tokens(chunks, len(texts), progress=False, **options)
    with monkeypatch.context() as patch:
        patch.setattr(stages.packed, "packing_pays", lambda model, dtype: False)
        padded, padded_lengths = encoder.encode_tokens(chunks, len(texts), progress=False, **options)
    assert np.array_equal(lengths, padded_lengths)
    return packed, padded


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_bert_matches_padded(tiny_model_dir, monkeypatch, pooling):
    encoder = load_encoder(tiny_model_dir, pooling=pooling, normalize=True)
    assert stages.packed.supports_packing(encoder.model)
    assert not stages.packed.packing_pays(encoder.model, torch.bfloat16)  # CPU: padded batches are faster there
    packed, padded = both_ways(encoder, monkeypatch, batch_size=3)  # batches cross text lengths and chunk ends
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    assert np.abs(packed[0] - packed[2]).max() > 1e-3  # distinct texts, distinct rows: no permutation hides
    assert encoder.model.config._attn_implementation != stages.packed.ATTENTION  # restored after encoding


def test_packed_roberta_numbers_positions_after_its_padding_id(tiny_model_dir, monkeypatch):
    from transformers import RobertaConfig, RobertaModel

    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
    )
    encoder = Encoder(RobertaModel(config), tokenizer, pooling="mean", normalize=False)
    assert stages.packed.position_start(encoder.model) == 2
    packed, padded = both_ways(encoder, monkeypatch, batch_size=4)
    np.testing.assert_allclose(packed, padded, atol=1e-5)


def test_packed_implementation_is_restored_when_encoding_fails(tiny_model_dir):
    encoder = load_encoder(tiny_model_dir)
    before = encoder.model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with stages.packed.packed_implementation(encoder.model):
            raise RuntimeError("boom")
    assert encoder.model.config._attn_implementation == before


def test_packed_attention_outside_encode_packed_is_a_clear_error(tiny_model_dir):
    encoder = load_encoder(tiny_model_dir)
    batch = encoder.tokenize(TEXTS[:2], 16)
    with stages.packed.packed_implementation(encoder.model), pytest.raises(RuntimeError, match="packing="):
        encoder(batch["input_ids"], batch["attention_mask"])


def test_packed_chunk_batches_cut_at_text_boundaries():
    lengths = np.array([3, 1, 4, 2])
    ids = np.arange(10, 20)
    chunk = stages.packed.PackedChunk(ids, lengths, torch.device("cpu"), first_position=2)
    input_ids, positions, packing = chunk.batch(1, 3)  # texts 1 and 2: tokens [3, 8)
    assert input_ids.tolist() == [[13, 14, 15, 16, 17]]
    assert positions.tolist() == [[2, 2, 3, 4, 5]]
    assert packing.offsets.tolist() == [0, 1, 5] and packing.longest == 4
    assert packing.pad(input_ids[0]).tolist() == [[13, 0, 0, 0], [14, 15, 16, 17]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash variable-length attention needs CUDA")
def test_flash_varlen_on_cuda_matches_padded_in_bf16(monkeypatch):
    # HARDNEG_TEST_MODEL: a model folder, where the bundled package is not installed (the GPU machine)
    encoder = load_encoder(os.environ.get("HARDNEG_TEST_MODEL", "bundled")).cuda()
    autocast = encoder.for_inference()
    assert autocast == "none" and stages.packed.packing_pays(encoder.model, next(encoder.parameters()).dtype)
    packed, padded = both_ways(encoder, monkeypatch, texts=TEXTS * 20, batch_size=16, autocast=autocast)
    assert ((packed * padded).sum(1)).min() > 0.999  # unit vectors: cosine
