"""stages.ml.packed: padding-free encoding gives the padded encoding's embeddings, and leaves the model as it was."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import stages.ml.packed
from stages.ml.models import Encoder, load_encoder, load_tokenizer, token_chunk

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
        patch.setattr(stages.ml.packed, "packing_pays", lambda model, dtype: True)
        packed, lengths = encoder.encode_tokens(chunks, len(texts), progress=False, **options)
    with monkeypatch.context() as patch:
        patch.setattr(stages.ml.packed, "packing_pays", lambda model, dtype: False)
        padded, padded_lengths = encoder.encode_tokens(chunks, len(texts), progress=False, **options)
    assert np.array_equal(lengths, padded_lengths)
    return packed, padded


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_bert_matches_padded(tiny_model_dir, monkeypatch, pooling):
    encoder = load_encoder(tiny_model_dir, pooling=pooling, normalize=True)
    assert stages.ml.packed.supports_packing(encoder.model)
    assert not stages.ml.packed.packing_pays(encoder.model, torch.bfloat16)  # CPU: padded batches are faster there
    packed, padded = both_ways(encoder, monkeypatch, batch_size=3)  # batches cross text lengths and chunk ends
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    assert np.abs(packed[0] - packed[2]).max() > 1e-3  # distinct texts, distinct rows: no permutation hides
    assert encoder.model.config._attn_implementation != stages.ml.packed.ATTENTION  # restored after encoding


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
    assert stages.ml.packed.position_start(encoder.model) == 2
    packed, padded = both_ways(encoder, monkeypatch, batch_size=4)
    np.testing.assert_allclose(packed, padded, atol=1e-5)


def test_packed_implementation_is_restored_when_encoding_fails(tiny_model_dir):
    encoder = load_encoder(tiny_model_dir)
    before = encoder.model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with stages.ml.packed.packed_implementation(encoder.model):
            raise RuntimeError("boom")
    assert encoder.model.config._attn_implementation == before


def test_packed_attention_outside_encode_packed_is_a_clear_error(tiny_model_dir):
    encoder = load_encoder(tiny_model_dir)
    batch = encoder.tokenize(TEXTS[:2], 16)
    with stages.ml.packed.packed_implementation(encoder.model), pytest.raises(RuntimeError, match="packing="):
        encoder(batch["input_ids"], batch["attention_mask"])


def test_packed_chunk_batches_cut_at_text_boundaries():
    lengths = np.array([3, 1, 4, 2])
    ids = np.arange(10, 20)
    chunk = stages.ml.packed.PackedChunk(ids, lengths, torch.device("cpu"), first_position=2)
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
    assert autocast == "none" and stages.ml.packed.packing_pays(encoder.model, next(encoder.parameters()).dtype)
    packed, padded = both_ways(encoder, monkeypatch, texts=TEXTS * 20, batch_size=16, autocast=autocast)
    assert ((packed * padded).sum(1)).min() > 0.999  # unit vectors: cosine


# training: Encoder.forward_packed (with gradient) against Encoder.forward on the padded batch

LONG_AND_SHORT = ["x", "Statins lower LDL cholesterol " * 12, "y z", TEXTS[3], "0-dimensional biomaterials " * 30]


def packed_and_padded(encoder: Encoder, texts=LONG_AND_SHORT, max_length: int = 128, as_type=np.asarray):
    """(forward_packed, forward on the padded batch) of the same texts."""
    ids, lengths = token_chunk(encoder.tokenizer, texts, max_length)
    batch = encoder.tokenize(texts, max_length)
    assert lengths.tolist() == batch["attention_mask"].sum(1).tolist() and lengths.max() > 10 * lengths.min()
    return encoder.forward_packed(as_type(ids), lengths), encoder(batch["input_ids"], batch["attention_mask"])


@pytest.mark.parametrize("pooling,normalize", [("mean", False), ("mean", True), ("cls", False), ("cls", True)])
def test_forward_packed_matches_forward_values_and_gradients(tiny_model_dir, pooling, normalize):
    encoder = load_encoder(tiny_model_dir, pooling=pooling, normalize=normalize).eval()  # eval: dropout off
    weights = torch.randn(len(LONG_AND_SHORT), encoder.dim, generator=torch.Generator().manual_seed(1))
    results = []
    for output in packed_and_padded(encoder):
        encoder.zero_grad(set_to_none=True)
        assert output.dtype == torch.float32 and output.shape == (len(LONG_AND_SHORT), encoder.dim)
        ((output * weights).sum() + output.pow(2).sum()).backward()
        grads = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
        results.append((output.detach(), grads))
    (packed, packed_grads), (padded, padded_grads) = results
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    assert (packed[0] - packed[2]).abs().max() > 1e-3  # distinct texts, distinct rows
    if normalize:
        torch.testing.assert_close(packed.norm(dim=1), torch.ones(len(packed)))
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) > 10
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, padded_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert encoder.model.config._attn_implementation != stages.ml.packed.ATTENTION  # restored after the forward


@pytest.mark.parametrize("as_type", ["numpy", "int32 numpy", "tensor", "pinned tensor"])
def test_forward_packed_takes_numpy_or_cpu_tensors(tiny_model_dir, as_type):
    if as_type == "pinned tensor" and not torch.cuda.is_available():
        pytest.skip("pinned memory needs an accelerator")
    convert = {
        "numpy": np.asarray,
        "int32 numpy": lambda ids: ids.astype(np.int32),
        "tensor": torch.from_numpy,
        "pinned tensor": lambda ids: torch.from_numpy(ids).pin_memory(),
    }[as_type]
    encoder = load_encoder(tiny_model_dir).eval()
    with torch.no_grad():
        packed, padded = packed_and_padded(encoder, as_type=convert)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)


def test_forward_packed_rejects_lengths_that_do_not_add_up(tiny_model_dir):
    encoder = load_encoder(tiny_model_dir)
    ids, lengths = token_chunk(encoder.tokenizer, TEXTS[:3], 32)
    with pytest.raises(ValueError, match="lengths sum"):
        encoder.forward_packed(ids[:-1], lengths)
    nothing = np.zeros(0, dtype=np.int64)
    assert encoder.forward_packed(nothing, nothing).shape == (0, encoder.dim)


def dropout_encoder(tiny_model_dir, attention_dropout: float) -> Encoder:
    """The tiny BERT with only attention-probability dropout (none on the hidden states)."""
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0)
    config.attention_probs_dropout_prob = attention_dropout
    model = BertModel.from_pretrained(tiny_model_dir, config=config)
    return Encoder(model, load_tokenizer(tiny_model_dir), pooling="mean", normalize=False)


def test_padded_attention_applies_attention_dropout_in_training(tiny_model_dir):
    encoder = dropout_encoder(tiny_model_dir, attention_dropout=0.3)
    ids, lengths = token_chunk(encoder.tokenizer, LONG_AND_SHORT, 64)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return encoder.forward_packed(ids, lengths).detach()

    encoder.train()
    first, again, other = run(0), run(0), run(1)
    torch.testing.assert_close(first, again, atol=0, rtol=0)  # same seed, same dropout masks
    assert (first - other).abs().max() > 1e-3  # the dropout argument is honoured, not ignored
    encoder.eval()  # transformers passes dropout 0 in eval mode: the padded forward's embeddings again
    with torch.no_grad():
        packed, padded = packed_and_padded(encoder, max_length=64)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    assert (packed - first).abs().max() > 1e-3


def test_training_without_dropout_is_the_padded_training(tiny_model_dir):
    encoder = dropout_encoder(tiny_model_dir, attention_dropout=0.0).train()
    packed, padded = packed_and_padded(encoder)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)


def test_packed_training_is_only_suggested_for_the_flash_kernel(tiny_model_dir, monkeypatch):
    encoder = load_encoder(tiny_model_dir)
    assert not encoder.supports_packed_training()  # CPU
    assert not encoder.supports_packed_training("bf16")
    seen = []
    monkeypatch.setattr(stages.ml.packed, "packing_pays", lambda model, dtype: seen.append(dtype) or True)
    assert encoder.supports_packed_training("fp16") and encoder.supports_packed_training(None)
    assert seen == [torch.float16, torch.float32]


def test_packing_pools_segments_without_padding():
    chunk = stages.ml.packed.PackedChunk(np.arange(10, 20), np.array([3, 1, 4, 2]), torch.device("cpu"), 0)
    _, _, packing = chunk.batch(1, 4)  # texts 1..3: tokens [3, 10)
    states = torch.arange(7.0).repeat_interleave(2).view(7, 2).requires_grad_()
    assert packing.text_of_token.tolist() == [0, 1, 1, 1, 1, 2, 2]
    assert packing.mean(states).tolist() == [[0, 0], [2.5, 2.5], [5.5, 5.5]]
    assert packing.first(states).tolist() == [[0, 0], [1, 1], [5, 5]]
    packing.mean(states).sum().backward()
    assert states.grad[:, 0].tolist() == [1, 0.25, 0.25, 0.25, 0.25, 0.5, 0.5]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash variable-length attention needs CUDA")
def test_forward_packed_on_cuda_trains_through_flash_without_syncing(tiny_model_dir):
    encoder = load_encoder(tiny_model_dir, normalize=True).cuda().eval()
    assert encoder.supports_packed_training("bf16")
    texts = LONG_AND_SHORT * 8
    ids, lengths = token_chunk(encoder.tokenizer, texts, 128)
    batch = {name: tensor.cuda() for name, tensor in encoder.tokenize(texts, 128).items()}
    weights = torch.randn(len(texts), encoder.dim, generator=torch.Generator().manual_seed(1)).cuda()
    outputs, grads = [], []
    for packed in (True, False):
        encoder.zero_grad(set_to_none=True)
        torch.cuda.set_sync_debug_mode("error" if packed else "default")  # packed: any host-device sync raises
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                output = encoder.forward_packed(ids, lengths) if packed else encoder(**batch)
            (output * weights).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        outputs.append(output.detach())
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    assert (outputs[0] * outputs[1]).sum(1).min() > 0.99  # unit vectors: cosine (bf16 noise)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99
    encoder.train()  # flash: attention-probability dropout off (logged), hidden dropout on
    with torch.autocast("cuda", dtype=torch.bfloat16):
        trained = encoder.forward_packed(ids, lengths)
    trained.sum().backward()
    assert torch.isfinite(trained).all()
