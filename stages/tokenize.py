"""Stage `tokenize`: the corpus as token ids, once per tokenizer and length, for every encoding of it.

A config encodes the same corpus with several encoders (zero-shot, warm-up, STAR, Inbatch, ...) that share the base
model's tokenizer; tokenizing once takes the tokenizer (CPU-bound: ~0.4M tokens/s a core) off the GPU's critical
path, as the paper's code does by pre-tokenizing MS MARCO. `encode` reads these ids for its shard and checks that
its own tokenizer has the same fingerprint.

Inputs: ``prepared``, optionally ``base_model`` (a local model folder: its content in the key). Output:
tokens.parquet (id, input_ids: list of int32, special tokens included, truncated to ``max_length``) in corpus order,
and summary.json (rows, tokens, the tokenizer's fingerprint, seconds).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from stages.cli import run_stage
from stages.errors import ConfigError
from stages.tables import TOKENS_SCHEMA, read_corpus, token_rows

VERSION = 1
log = logging.getLogger("stages.tokenize")

TOKENS = "tokens.parquet"
CHUNK = 16384  # documents tokenized and written at a time


@dataclass
class TokenizeParams:
    model: str = "bundled"
    """Whose tokenizer: 'bundled', a local model folder or a Hub id (the config's base encoder)."""
    max_length: int = 256
    """Truncation in tokens (the encoder's doc_max_length)."""


def tokenize(params: TokenizeParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    from stages.models import document_texts, load_tokenizer, tokenizer_fingerprint

    if params.max_length < 2:
        raise ConfigError(f"tokenize max_length={params.max_length}", fix="use max_length >= 2")
    corpus = read_corpus(inputs["prepared"])
    ids, texts = corpus["doc_id"].tolist(), document_texts(corpus)
    tokenizer = load_tokenizer(params.model)
    began = time.perf_counter()
    tokens = write_tokens(tokenizer, ids, texts, params.max_length, Path(out_dir) / TOKENS)
    seconds = time.perf_counter() - began
    log.info("tokenized %d documents (%d tokens) in %.1f s", len(ids), tokens, seconds)
    return {
        "rows": len(ids),
        "tokens": tokens,
        "max_length": params.max_length,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
    }


def write_tokens(tokenizer, ids: list[str], texts: list[str], max_length: int, path: Path) -> int:
    """``texts`` tokenized into a tokens file, CHUNK at a time; returns the number of tokens written."""
    from stages.models import token_chunk

    tokens = 0
    with pq.ParquetWriter(path, TOKENS_SCHEMA, compression="zstd") as writer:
        for start in tqdm(range(0, len(texts), CHUNK), desc="tokenize", unit="chunk"):
            token_ids, lengths = token_chunk(tokenizer, texts[start : start + CHUNK], max_length)
            writer.write_table(token_rows(ids[start : start + CHUNK], token_ids, lengths))
            tokens += int(lengths.sum())
    return tokens


def main(argv: list[str] | None = None) -> int:
    return run_stage("tokenize", TokenizeParams, tokenize, argv)


if __name__ == "__main__":
    sys.exit(main())
