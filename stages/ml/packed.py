"""Padding-free encoding: a batch of texts run as one packed row of tokens, attention kept within each text.

Every linear layer then works on the batch's real tokens only (no padding to the longest text), and the attention
runs as torch's variable-length flash attention (`torch.nn.attention.varlen`) on CUDA in bf16/fp16. Elsewhere (CPU,
float32, an older torch) the attention pads the heads to the batch's longest text and masks the padding: the same
result, what the CPU tests compare against; encoding packs only where the flash kernel runs (`packing_pays`), since
on a CPU length-sorted padded batches are faster. It plugs into transformers through its public attention interface
(`AttentionInterface.register`), switched on only while `packed_implementation` is active, so training and saved
models keep their own attention.

Packing needs to know how a model numbers positions: models whose type is in `POSITION_START` are packed, others
are encoded padded (`supports_packing`).

Training runs packed too (`Encoder.forward_packed`): gradients flow through both attentions (torch registers the
flash kernel's backward with `varlen_attn`). Attention dropout differs between them: the padded reference attention
applies transformers' ``dropout`` argument (attention-probability dropout while the model trains, none in eval
mode), but the variable-length flash kernel has no dropout, so **packed training on CUDA in bf16/fp16 runs without
attention-probability dropout** (``attention_probs_dropout_prob`` is ignored there, logged once); the hidden-state
dropouts (embeddings, attention output, feed-forward output) still apply, as they are separate layers. Inference is
unaffected: transformers passes ``dropout=0`` in eval mode.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.9
    varlen_attn = None

log = logging.getLogger("stages.ml.packed")
ATTENTION = "hardneg_packed"
POSITION_START = {
    "bert": lambda config: 0,
    "roberta": lambda config: config.pad_token_id + 1,  # RoBERTa's positions start after its padding id
    "xlm-roberta": lambda config: config.pad_token_id + 1,
}
FLASH_DTYPES = (torch.bfloat16, torch.float16)


@dataclass
class Packing:
    """Where a batch's texts lie in its packed row of ``sum(lengths)`` tokens (all tensors on the model's device)."""

    offsets: torch.Tensor
    """int32 (texts + 1,): text i is tokens [offsets[i], offsets[i + 1])."""
    longest: int
    """The longest text's tokens (a host int: the attention kernel needs it without a device sync)."""
    padded_index: torch.Tensor
    """int64 (tokens,): each token's place in a (texts, longest) padded layout (row * longest + position)."""
    lengths: torch.Tensor
    """int64 (texts,)."""
    text_of_token: torch.Tensor
    """int64 (tokens,): the text (0 .. texts - 1) each token belongs to."""

    @property
    def texts(self) -> int:
        return len(self.lengths)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """(tokens, ...) -> (texts, longest, ...) with zeros where a text is shorter than the longest."""
        padded = packed.new_zeros((self.texts * self.longest, *packed.shape[1:]))
        padded[self.padded_index] = packed
        return padded.view(self.texts, self.longest, *packed.shape[1:])

    def mean(self, packed: torch.Tensor) -> torch.Tensor:
        """(tokens, ...) -> (texts, ...): each text's mean over its tokens, a segment sum (``index_add``, with
        gradient) divided by its length; no device sync, no padded copy. On CUDA the sum's order is not fixed
        (atomic adds) unless `torch.use_deterministic_algorithms` is on."""
        sums = packed.new_zeros((self.texts, *packed.shape[1:])).index_add(0, self.text_of_token, packed)
        counts = self.lengths.clamp(min=1).to(packed.dtype)
        return sums / counts.view(-1, *[1] * (packed.dim() - 1))

    def first(self, packed: torch.Tensor) -> torch.Tensor:
        """(tokens, ...) -> (texts, ...): each text's first token (CLS)."""
        return packed.index_select(0, self.offsets[:-1])

    def key_mask(self) -> torch.Tensor:
        """bool (texts, longest): True on real tokens."""
        return torch.arange(self.longest, device=self.lengths.device) < self.lengths[:, None]


def supports_packing(model: torch.nn.Module) -> bool:
    return getattr(model.config, "model_type", None) in POSITION_START


def packing_pays(model: torch.nn.Module, compute_dtype: torch.dtype) -> bool:
    """Pack when the model's positions are known and its attention will run the flash kernel: CUDA, bf16/fp16
    (``compute_dtype``: the autocast dtype, or the weights' dtype without autocast)."""
    device = next(model.parameters()).device
    return supports_packing(model) and device.type == "cuda" and compute_dtype in FLASH_DTYPES and varlen_available()


def position_start(model: torch.nn.Module) -> int:
    return POSITION_START[model.config.model_type](model.config)


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, packing=None, **kwargs):
    """transformers' attention-function signature; query/key/value (1, heads, tokens, head_dim) of a packed row.
    Returns ((1, tokens, heads, head_dim), None) as transformers' own attention functions do.

    ``dropout`` (attention-probability dropout, which transformers sets to 0 outside training) is applied by the
    padded attention; the flash kernel has none and runs without it (see the module docstring)."""
    if packing is None:
        raise RuntimeError(f"the {ATTENTION!r} attention needs a packing= argument; encode with Encoder.encode_tokens")
    query, key, value = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
    default_scale = query.shape[-1] ** -0.5
    flash = varlen_available() and query.is_cuda and query.dtype in FLASH_DTYPES
    if flash and (scaling is None or abs(scaling - default_scale) < 1e-12):
        if dropout > 0:
            _note_dropout_skipped(dropout)
        out = varlen_attn(query, key, value, packing.offsets, packing.offsets, packing.longest, packing.longest)
    else:
        heads_first = [packing.pad(t).transpose(1, 2) for t in (query, key, value)]  # (texts, heads, longest, dim)
        mask = packing.key_mask()[:, None, None, :]
        out = torch.nn.functional.scaled_dot_product_attention(
            *heads_first, attn_mask=mask, dropout_p=dropout, scale=scaling
        )
        out = out.transpose(1, 2).flatten(0, 1)[packing.padded_index]  # back to (tokens, heads, head_dim)
    return out.unsqueeze(0), None


_dropout_noted = False


def _note_dropout_skipped(dropout: float) -> None:
    global _dropout_noted
    if not _dropout_noted:
        _dropout_noted = True
        log.warning(
            "packed training on the flash kernel: attention-probability dropout (%g) is not applied "
            "(the variable-length flash attention has none); hidden-state dropout still is",
            dropout,
        )


def varlen_available() -> bool:
    return varlen_attn is not None


def register() -> None:
    """Make ``ATTENTION`` known to transformers (once; repeated calls are harmless)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, lambda *args, **kwargs: None)  # packing replaces the mask


@contextmanager
def packed_implementation(model: torch.nn.Module) -> Iterator[None]:
    """``model`` runs `packed_attention` inside the block and its own attention again after it."""
    register()
    previous = model.config._attn_implementation
    model.config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = previous


class PackedChunk:
    """A chunk of texts as packed token ids on the device, cut into batches of consecutive texts without syncing.

    Only the ids and lengths cross to the device (pinned, asynchronously on CUDA); the rest is computed there.
    ``ids`` may also be a CPU tensor (pinned or not); ``lengths`` stay a host array: the batches' token counts and
    longest texts are read from it, never from the device."""

    def __init__(
        self, ids: np.ndarray | torch.Tensor, lengths: np.ndarray, device: torch.device, first_position: int
    ):
        lengths = np.asarray(lengths)
        self.lengths, self.offsets = lengths, np.concatenate([[0], np.cumsum(lengths)])
        self.ids = to_device(ids, device).long()  # int32 as stored: half the bytes to copy
        self.lengths_on_device = to_device(lengths, device)
        self.offsets_on_device = torch.nn.functional.pad(self.lengths_on_device.cumsum(0), (1, 0))
        texts, tokens = len(lengths), len(ids)
        self.text_of_token = torch.repeat_interleave(
            torch.arange(texts, device=device), self.lengths_on_device, output_size=tokens
        )
        self.positions = torch.arange(tokens, device=device) - self.offsets_on_device[self.text_of_token]
        self.first_position = first_position

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, Packing]:
        """(ids (1, tokens), positions (1, tokens), packing) of texts [start, stop)."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        longest = int(self.lengths[start:stop].max())
        tokens = slice(first, last)
        text_of_token = self.text_of_token[tokens] - start
        packing = Packing(
            offsets=(self.offsets_on_device[start : stop + 1] - first).int(),
            longest=longest,
            padded_index=text_of_token * longest + self.positions[tokens],
            lengths=self.lengths_on_device[start:stop],
            text_of_token=text_of_token,
        )
        return self.ids[None, tokens], self.positions[None, tokens] + self.first_position, packing


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """On CUDA through pinned memory without waiting for the GPU; the caching host allocator keeps the pinned copy
    alive until the transfer is done. A tensor already pinned (or already on the device) is not copied on the host."""
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
