"""Stage `encode`: embed one contiguous shard of the corpus (or of a split's queries) with an encoder.

Inputs: ``prepared`` (a `prepare` artifact), optionally ``model`` (a training artifact; its ``model/`` folder is
the encoder and wins over the ``model`` param) and ``tokens`` (a `tokenize` artifact of the corpus: its ids are
encoded instead of tokenizing the texts here, and no text is read; the encoder's tokenizer and ``max_length`` must
match it). Shard i of n holds rows [i*N/n, (i+1)*N/n) in file order, so the shards concatenated in order are the
whole table. Output: embeddings.parquet (id, embedding: fixed-size list of float16 or float32), written chunk by
chunk while the next chunk encodes, and summary.json (rows, dim, seconds, texts/s, non-padding tokens/s). Runs on
the GPU when there is one (bf16 weights there by default; see `Encoder.for_inference`).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pyarrow as pa

from .core.cli import run_stage
from .core.errors import ConfigError
from .ml.encoder_spec import EncoderSpec
from .core import parquet_io
from .core.tables import EmbeddingWriter, iter_token_chunks, read_corpus, read_queries
from .ml.models import check_tokens
from .core.artifacts import CORPUS, EMBEDDINGS, TOKENS

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

    from .ml.models import TOKENIZE_CHUNK, load_encoder, model_spec

    check_params(params)
    pretokenized = "tokens" in inputs and params.what == "corpus"
    ids, texts, total = rows_to_encode(params, inputs, pretokenized)
    start, stop = shard_range(total, params.shard, params.num_shards)
    ids = ids.slice(start, stop - start)

    spec = model_spec(params.model, inputs)
    encoder = load_encoder(spec, pooling=params.pooling, normalize=params.normalize)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)
    options = {"batch_size": params.batch_size, "autocast": encoder.for_inference(params.autocast)}
    options["desc"] = f"encode {params.what} {params.shard + 1}/{params.num_shards}"
    began = time.perf_counter()
    with EmbeddingWriter(Path(out_dir) / EMBEDDINGS, encoder.dim, params.dtype) as writer:
        options["sink"] = lambda first, rows: writer.write(ids.slice(first, len(rows)), rows)  # written while encoding
        if pretokenized:
            check_tokens(Path(inputs["tokens"]), encoder, params.max_length, total)
            chunks = iter_token_chunks(Path(inputs["tokens"]) / TOKENS, start, stop, TOKENIZE_CHUNK)
            _, lengths = encoder.encode_tokens(chunks, len(ids), **options)
        else:
            _, lengths = encoder.encode_counted(texts[start:stop], params.max_length, **options)
    seconds = time.perf_counter() - began
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


def rows_to_encode(params: EncodeParams, inputs: Mapping[str, Path], pretokenized: bool) -> tuple[pa.Array, list, int]:
    """(every row's id, their texts (empty when pretokenized: the tokens file has the ids and no text is read),
    the number of rows)."""
    from .ml.models import document_texts

    if pretokenized:  # the corpus's rows, which check_tokens compares with the tokens file's
        ids = parquet_io.read_table(Path(inputs["tokens"]) / TOKENS, columns=["id"]).column("id").combine_chunks()
        return ids, [], parquet_io.open_file(Path(inputs["prepared"]) / CORPUS).metadata.num_rows
    if params.what == "corpus":
        table = read_corpus(inputs["prepared"])
        return pa.array(table["doc_id"], pa.string()), document_texts(table), len(table)
    table = read_queries(inputs["prepared"], params.split)
    return pa.array(table["query_id"], pa.string()), table["text"].tolist(), len(table)


def main(argv: list[str] | None = None) -> int:
    return run_stage("encode", EncodeParams, encode, argv)


if __name__ == "__main__":
    sys.exit(main())
