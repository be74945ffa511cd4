"""Stage `encode`: embed one contiguous shard of the corpus (or of a split's queries) with an encoder.

Inputs: ``prepared`` (a `prepare` artifact), optionally ``model`` (a training artifact; its ``model/`` folder is
the encoder and wins over the ``model`` param) and ``tokens`` (a `tokenize` artifact of the corpus: its ids are
encoded instead of tokenizing the texts here; the encoder's tokenizer and ``max_length`` must match it). Shard i of n holds rows [i*N/n, (i+1)*N/n) in file order, so the
shards concatenated in order are the whole table. Output: embeddings.parquet (id, embedding: fixed-size list of
float16 or float32) and summary.json (rows, dim, seconds, texts/s, non-padding tokens/s). Runs on the GPU when
there is one (bf16 weights there by default; see `Encoder.for_inference`).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .core.cli import run_stage
from .core.errors import ConfigError
from .ml.encoder_spec import EncoderSpec
from .core.tables import iter_token_chunks, read_corpus, read_queries, write_embeddings
from .ml.models import check_tokens
from .core.artifacts import EMBEDDINGS, TOKENS

VERSION = 1
log = logging.getLogger("stages.encode")

WHAT = ("corpus", "queries")
DTYPES = ("float16", "float32")


@dataclass
class EncodeParams(EncoderSpec):
    """`EncoderSpec`'s fields (the encoder when there is no ``model`` input), and:"""

    what: str
    """'corpus' (title + " " + text) or 'queries' (of ``split``)."""
    split: str
    """Whose queries, when ``what`` is 'queries'."""
    shard: int
    """Which contiguous shard of the rows to encode (0-based)."""
    num_shards: int
    max_length: int
    """Truncation in tokens of whatever is encoded (documents: 256, MiniLM's own; queries: shorter)."""
    batch_size: int
    dtype: str
    """Storage precision of the embeddings: float16 or float32."""
    autocast: str
    """auto (bf16 on CUDA, none on CPU), bf16, fp16 or none; on CUDA bf16/fp16 cast the weights (inference only)."""


def check_params(params: EncodeParams) -> None:
    if params.what not in WHAT:
        raise ConfigError(f"encode what={params.what!r}", fix=f"use one of {WHAT}")
    if params.dtype not in DTYPES:
        raise ConfigError(f"encode dtype={params.dtype!r}", fix=f"use one of {DTYPES}")
    if params.num_shards < 1 or not 0 <= params.shard < params.num_shards:
        raise ConfigError(
            f"shard {params.shard} of {params.num_shards}", fix="need num_shards >= 1 and 0 <= shard < num_shards"
        )
    if params.max_length < 2 or params.batch_size < 1:
        raise ConfigError("max_length must be >= 2 and batch_size >= 1")


def shard_range(rows: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Rows [start, stop) of shard ``shard`` of ``num_shards`` contiguous shards."""
    return shard * rows // num_shards, (shard + 1) * rows // num_shards


def encode(params: EncodeParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    import torch

    from .ml.models import TOKENIZE_CHUNK, document_texts, load_encoder, model_spec

    check_params(params)
    if params.what == "corpus":
        table = read_corpus(inputs["prepared"])
        ids_column, texts_of = "doc_id", document_texts
    else:
        table = read_queries(inputs["prepared"], params.split)
        ids_column, texts_of = "query_id", lambda frame: frame["text"].tolist()
    total = len(table)
    start, stop = shard_range(total, params.shard, params.num_shards)
    table = table.iloc[start:stop]
    ids, texts = table[ids_column].tolist(), texts_of(table)

    spec = model_spec(params.model, inputs)
    encoder = load_encoder(spec, pooling=params.pooling, normalize=params.normalize)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)
    options = {"batch_size": params.batch_size, "autocast": encoder.for_inference(params.autocast)}
    options["desc"] = f"encode {params.what} {params.shard + 1}/{params.num_shards}"
    began = time.perf_counter()
    if "tokens" in inputs and params.what == "corpus":
        check_tokens(Path(inputs["tokens"]), encoder, params.max_length, total)
        chunks = iter_token_chunks(Path(inputs["tokens"]) / TOKENS, start, stop, TOKENIZE_CHUNK)
        embeddings, lengths = encoder.encode_tokens(chunks, len(ids), **options)
    else:
        embeddings, lengths = encoder.encode_counted(texts, params.max_length, **options)
    seconds = time.perf_counter() - began
    write_embeddings(Path(out_dir) / EMBEDDINGS, ids, embeddings, params.dtype)
    log.info("encoded %d %s rows [%d, %d) on %s in %.1f s", len(ids), params.what, start, stop, device, seconds)
    return {
        "items": {"documents" if params.what == "corpus" else "queries": len(ids), "tokens": int(lengths.sum())},
        "what": params.what,
        "model": spec,
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "rows": len(ids),
        "first_row": start,
        "stop_row": stop,
        "dim": encoder.dim,
        "device": str(device),
        "seconds": round(seconds, 3),
        "texts_per_s": round(len(ids) / seconds, 1) if seconds > 0 else None,
        "tokens": int(lengths.sum()),
        "tokens_per_s": round(float(lengths.sum()) / seconds, 1) if seconds > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    return run_stage("encode", EncodeParams, encode, argv)


if __name__ == "__main__":
    sys.exit(main())
