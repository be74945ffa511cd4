"""Stage `tokenize`: the corpus as token ids, once per tokenizer and length, for every encoding of it.

A config encodes the same corpus with several encoders (zero-shot, warm-up, STAR, Inbatch, ...) that share the base
model's tokenizer; tokenizing once takes the tokenizer (CPU-bound) off the GPU's critical path, as the paper's code
does by pre-tokenizing MS MARCO. `encode` reads these ids for its shard and checks that its own tokenizer has the same
fingerprint.

The corpus is read CHUNK documents at a time (never whole as Python strings) and tokenized on every core the stage
is given (`stages.core.resources.available_threads`: its CPU affinity, capped by OMP_NUM_THREADS, which Snakemake sets to
the rule's threads): a pool of processes, TASK documents a task, written in corpus order, so the file is the same
bytes for any number of threads. Processes rather than HF tokenizers' Rust threads: those scale the encoding (2.0x
on 2 cores) but not turning encodings into arrays, Python work that would cap 16 cores at ~4M tokens/s; here only
reading and writing (~3% of the one-core time) stay in one process.

Inputs: ``prepared``, optionally ``base_model`` (a local model folder: its content in the key). Output:
tokens.parquet (id, input_ids: list of int32, special tokens included, truncated to ``max_length``) in corpus order,
and summary.json (rows, tokens, the tokenizer's fingerprint, seconds).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from .core import parquet_io
from .core.cli import run_stage
from .core.errors import ArtifactError, ConfigError
from .core.resources import available_threads
from .core.tables import TOKENS_SCHEMA, token_rows
from .core.artifacts import CORPUS, TOKENS

VERSION = 1
log = logging.getLogger("stages.tokenize")

CHUNK = 16384  # documents read and written at a time (a row group of the output)
TASK = 2048  # documents a worker process tokenizes at a time

Chunk = tuple[list[str], list[str]]  # (ids, texts)


@dataclass
class TokenizeParams:
    model: str
    """Whose tokenizer: 'bundled', a local model folder or a Hub id (the config's base encoder)."""
    max_length: int
    """Truncation in tokens (the encoder's doc_max_length)."""


def tokenize(params: TokenizeParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    from .ml.models import load_tokenizer, tokenizer_fingerprint

    if params.max_length < 2:
        raise ConfigError(f"tokenize max_length={params.max_length}", fix="use max_length >= 2")
    tokenizer = load_tokenizer(params.model)
    corpus = Path(inputs["prepared"]) / CORPUS
    if not corpus.is_file():
        raise ArtifactError("missing table", path=corpus, fix="rerun the stage that writes it")
    total = parquet_io.open_file(corpus).metadata.num_rows
    threads = min(available_threads(), max(1, -(-total // TASK)))  # no process without a task
    began = time.perf_counter()
    rows, tokens = write_token_chunks(
        tokenizer, corpus_chunks(corpus, CHUNK), params.max_length, Path(out_dir) / TOKENS, threads, -(-total // CHUNK)
    )
    seconds = time.perf_counter() - began
    log.info("tokenized %d documents (%d tokens) in %.1f s on %d threads", rows, tokens, seconds, threads)
    return {
        "items": {"documents": rows, "tokens": tokens},
        "rows": rows,
        "tokens": tokens,
        "max_length": params.max_length,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
    }


def corpus_chunks(corpus: Path, size: int) -> Iterator[Chunk]:
    """The corpus table's (doc ids, title + " " + text) ``size`` rows at a time, read in batches."""
    from .ml.models import document_texts

    pending: list[pa.RecordBatch] = []
    for batch in parquet_io.iter_batches(corpus, batch_size=size, columns=["doc_id", "title", "text"]):
        pending.append(batch)
        while sum(b.num_rows for b in pending) >= size:
            table = pa.Table.from_batches(pending)
            frame = table.slice(0, size).to_pandas()
            yield frame["doc_id"].tolist(), document_texts(frame)
            pending = table.slice(size).to_batches()
    if pending and sum(b.num_rows for b in pending):
        frame = pa.Table.from_batches(pending).to_pandas()
        yield frame["doc_id"].tolist(), document_texts(frame)


def write_tokens(tokenizer, ids: list[str], texts: list[str], max_length: int, path: Path, threads: int = 1) -> int:
    """``texts`` tokenized into a tokens file, CHUNK at a time; returns the number of tokens written."""
    chunks = ((ids[start : start + CHUNK], texts[start : start + CHUNK]) for start in range(0, len(texts), CHUNK))
    return write_token_chunks(tokenizer, chunks, max_length, path, threads, -(-len(texts) // CHUNK))[1]


def write_token_chunks(
    tokenizer, chunks: Iterable[Chunk], max_length: int, path: Path, threads: int = 1, total: int | None = None
) -> tuple[int, int]:
    """Every chunk tokenized (on ``threads`` processes) and written in order; returns (rows, tokens)."""
    rows = tokens = 0
    spec = (tokenizer.backend_tokenizer.to_str(), max_length, tokenizer.truncation_side)
    with parquet_io.writer(path, TOKENS_SCHEMA) as writer:
        progress = tqdm(tokenized(spec, chunks, threads), desc="tokenize", unit="chunk", total=total)
        for ids, (token_ids, lengths) in progress:
            writer.write_table(token_rows(ids, token_ids, lengths))
            rows, tokens = rows + len(ids), tokens + int(lengths.sum())
    return rows, tokens


def tokenized(spec: tuple, chunks: Iterable[Chunk], threads: int) -> Iterator[tuple[list[str], tuple]]:
    """(ids, (token ids one after another, tokens per text)) per chunk, in order: in this process for one thread,
    else on a pool of ``threads`` processes, TASK texts a task, two chunks or two tasks a process in flight."""
    if threads <= 1:
        backend = _backend(*spec)
        with _one_thread():
            yield from ((ids, _encode(texts, backend)) for ids, texts in chunks)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(threads, mp_context=context, initializer=_start_worker, initargs=spec) as pool:
        pending: deque = deque()
        for ids, texts in chunks:
            pending.append((ids, [pool.submit(_encode, texts[i : i + TASK]) for i in range(0, len(texts), TASK)]))
            if len(pending) > 1 and sum(len(tasks) for _, tasks in pending) > 2 * threads:
                yield _joined(*pending.popleft())  # the next chunk's tasks keep the pool busy meanwhile
        while pending:
            yield _joined(*pending.popleft())


def _joined(ids: list[str], tasks: list) -> tuple[list[str], tuple[np.ndarray, np.ndarray]]:
    parts = [task.result() for task in tasks]
    return ids, (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _backend(state: str, max_length: int, side: str):
    """A copy of the fast tokenizer, truncating as ``tokenizer(texts, truncation=True, max_length=...)`` does."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(state)
    backend.no_padding()
    backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=side)
    return backend


@contextlib.contextmanager
def _one_thread():
    """HF tokenizers' batch encoding on one core (it reads TOKENIZERS_PARALLELISM at every call)."""
    saved = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PARALLELISM, None)
        else:
            os.environ[PARALLELISM] = saved


PARALLELISM = "TOKENIZERS_PARALLELISM"
_BACKEND = None  # a worker process's tokenizer


def _start_worker(*spec) -> None:
    global _BACKEND
    os.environ[PARALLELISM] = "false"  # one core a process
    _BACKEND = _backend(*spec)


def _encode(texts: list[str], backend=None) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the texts one after another, int32; tokens per text, int64), special tokens included."""
    backend = _BACKEND if backend is None else backend
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no character offsets
    ids = [encoding.ids for encoding in encode([str(text).strip() for text in texts])]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())), lengths


def main(argv: list[str] | None = None) -> int:
    return run_stage("tokenize", TokenizeParams, tokenize, argv)


if __name__ == "__main__":
    sys.exit(main())
