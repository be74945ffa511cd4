"""The params fields of every stage that loads an encoder (torch-free, so that params classes import fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EncoderSpec:
    """The params fields of every stage that loads an encoder: the one it uses when no trained model comes as an
    input, and how it pools and normalises."""

    model: str
    """'bundled' (all-MiniLM-L6-v2) or a local model folder."""
    pooling: str
    """mean, cls, or 'auto' (the model's own; see stages.ml.models)."""
    normalize: bool | str
    """L2-normalise embeddings: true, false, or 'auto' (the model's own)."""
