"""Stage `tokenize`: the corpus as token ids, once per tokenizer and length, for every encoding of it.

A config encodes the same corpus with several encoders (zero-shot, warm-up, STAR, Inbatch, ...) that share the base
model's tokenizer; tokenizing once takes the tokenizer (CPU-bound) off the GPU's critical path, as the paper's code
does by pre-tokenizing MS MARCO. `encode` reads these ids for its shard and checks that its own tokenizer has the same
fingerprint.

The corpus is tokenized on every core the stage is given (`stages.core.resources.available_threads`: its CPU
affinity, capped by OMP_NUM_THREADS, which Snakemake sets to the rule's threads) by a pool of processes, started
while the tokenizer loads. Each reads its own rows of the corpus table (TASK a task, `parquet_io.read_row_range`),
joins title + " " + text (`document_texts`), tokenizes them on one core with the fast tokenizer's Rust backend and
sends back only token arrays (int32 ids, lengths). This process reads the doc ids and writes the arrays in corpus
order, CHUNK rows a row group, so the file is the same bytes for any number of threads (and as when this process
read the texts and pickled them to the workers, the bound at 16 workers then). Processes rather than HF tokenizers' Rust threads: those scale the encoding but not turning encodings
into arrays, which is Python work.

Where the time goes (2-core VM, MS MARCO-shaped passages of 86 tokens, CPU ns a token, best of 5): encoding 1,855;
a worker's reading of its rows and building the texts 58 (a row group is decoded from its start up to the rows read,
~7x the rows read in 100k-row groups), flat ids 43; this process 28 (writing 25: zstd and dictionary pages), a
ceiling of ~30M tokens/s. summary.json's ``cpu_seconds`` (workers, main) gives both rates for a run.

Inputs: ``prepared``, optionally ``base_model`` (a local model folder: its content in the key). Output:
tokens.parquet (id, input_ids: list of int32, special tokens included, truncated to ``max_length``) in corpus order,
and summary.json (rows, tokens, the tokenizer's fingerprint, seconds of the tokenizing loop, ``cpu_seconds``: CPU seconds of
the workers and of this process in it).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import sys
import tempfile
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
from .core.texts import document_texts
from .core.artifacts import CORPUS, TOKENS

VERSION = 1
log = logging.getLogger("stages.tokenize")

CHUNK = 16384  # documents written at a time (a row group of the output)
TASK = 8192  # documents a process reads and tokenizes at a time (a chunk holds whole tasks)

Tokenized = tuple[np.ndarray, np.ndarray, float]  # (ids one after another, tokens per document, CPU seconds)


@dataclass
class TokenizeParams:
    model: str
    """Whose tokenizer: 'bundled', a local model folder or a Hub id (the config's base encoder)."""
    max_length: int
    """Truncation in tokens (the encoder's doc_max_length)."""


@dataclass(frozen=True)
class Spec:
    """What a process needs to tokenize as the stage does; small, it goes with every task."""

    state: str
    """The fast tokenizer's JSON file (written once, read once by each process)."""
    max_length: int
    side: str


def tokenize(params: TokenizeParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    from .ml.models import load_tokenizer, tokenizer_fingerprint

    if params.max_length < 2:
        raise ConfigError(f"tokenize max_length={params.max_length}", fix="use max_length >= 2")
    corpus = Path(inputs["prepared"]) / CORPUS
    if not corpus.is_file():
        raise ArtifactError("missing table", path=corpus, fix="rerun the stage that writes it")
    total = parquet_io.open_file(corpus).metadata.num_rows
    threads = min(available_threads(), max(1, -(-total // TASK)))  # no process without a task
    with tempfile.TemporaryDirectory() as tmp, processes(threads) as pool:  # they start while the tokenizer loads
        tokenizer = load_tokenizer(params.model)
        spec = Spec(str(Path(tmp) / "tokenizer.json"), params.max_length, tokenizer.truncation_side)
        Path(spec.state).write_text(tokenizer.backend_tokenizer.to_str())
        began = time.perf_counter()
        rows, tokens, cpu = write_corpus_tokens(spec, corpus, Path(out_dir) / TOKENS, pool, threads)
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
        "cpu_seconds": {part: round(value, 3) for part, value in cpu.items()},
    }


@contextlib.contextmanager
def processes(threads: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of ``threads`` started processes (None for one thread: the work runs here, on one core)."""
    if threads <= 1:
        with _one_thread():
            yield None
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(threads, mp_context=context, initializer=_start_worker) as pool:
        for _ in range(threads):
            pool.submit(os.getpid)  # each submit starts a process: now, not at the first task
        yield pool


def write_corpus_tokens(
    spec: Spec, corpus: Path, path: Path, pool: ProcessPoolExecutor | None, threads: int
) -> tuple[int, int, dict[str, float]]:
    """The corpus table's documents tokenized (by the pool's processes, each reading its own rows) and written in
    corpus order, CHUNK a row group; returns (rows, tokens, CPU seconds of the tokenizing processes and of this
    one's reading, joining and writing)."""
    total = parquet_io.open_file(corpus).metadata.num_rows
    spans = [(start, min(start + CHUNK, total)) for start in range(0, total, CHUNK)]
    chunks = [[(first, min(first + TASK, stop)) for first in range(start, stop, TASK)] for start, stop in spans]
    cpu = {"workers": 0.0, "main": time.process_time()}

    def pieces() -> Iterator[tuple[pa.Array, np.ndarray, np.ndarray]]:
        tokenized = _tokenized(spec, corpus, chunks, pool, 2 * threads)
        for ids, (token_ids, lengths, seconds) in zip(_id_chunks(corpus, CHUNK), tokenized):
            cpu["workers"] += seconds
            yield ids, token_ids, lengths

    rows, tokens = _write(path, tqdm(pieces(), desc="tokenize", unit="chunk", total=len(chunks)))
    cpu["main"] = time.process_time() - cpu["main"] - (cpu["workers"] if pool is None else 0.0)
    return rows, tokens, cpu


def write_tokens(tokenizer, ids: list[str], texts: list[str], max_length: int, path: Path) -> int:
    """``texts`` (in memory) tokenized here into a tokens file, CHUNK at a time; returns the number of tokens."""
    backend = _backend(tokenizer.backend_tokenizer.to_str(), max_length, tokenizer.truncation_side)
    starts = range(0, len(texts), CHUNK)
    return _write(path, ((ids[s : s + CHUNK], *_encode(texts[s : s + CHUNK], backend)) for s in starts))[1]


def _write(path: Path, pieces: Iterable[tuple[list[str] | pa.Array, np.ndarray, np.ndarray]]) -> tuple[int, int]:
    """(document ids, their token ids one after another, tokens per document) pieces as row groups; (rows, tokens)."""
    rows = tokens = 0
    with parquet_io.writer(path, TOKENS_SCHEMA) as writer:
        for ids, token_ids, lengths in pieces:
            writer.write_table(token_rows(ids, token_ids, lengths))
            rows, tokens = rows + len(ids), tokens + int(lengths.sum())
    return rows, tokens


def _id_chunks(corpus: Path, size: int) -> Iterator[pa.Array]:
    """The corpus table's doc ids, ``size`` at a time (the last chunk shorter), read in batches."""
    pending: list[pa.Array] = []
    for batch in parquet_io.iter_batches(corpus, batch_size=size, columns=["doc_id"]):
        pending.append(batch.column(0))
        while sum(map(len, pending)) >= size:
            ids = pa.concat_arrays(pending)
            yield ids.slice(0, size)
            pending = [ids.slice(size)]
    if sum(map(len, pending)):
        yield pa.concat_arrays(pending)


def _tokenized(spec: Spec, corpus: Path, chunks: list[list[tuple[int, int]]], pool, most: int) -> Iterator[Tokenized]:
    """Each chunk's tasks (row ranges) tokenized and joined, in order: here without a pool, else on its processes,
    about ``most`` tasks in flight."""
    if pool is None:
        yield from (_joined([_encode_rows(spec, corpus, *task) for task in tasks]) for tasks in chunks)
        return
    pending: deque = deque()
    for tasks in chunks:
        pending.append([pool.submit(_encode_rows, spec, corpus, *task) for task in tasks])
        while sum(map(len, pending)) > most:  # the next tasks keep the pool busy meanwhile
            yield _joined([task.result() for task in pending.popleft()])
    while pending:
        yield _joined([task.result() for task in pending.popleft()])


def _joined(parts: list[Tokenized]) -> Tokenized:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), sum(p[2] for p in parts)


def _encode_rows(spec: Spec, corpus: Path, start: int, stop: int) -> Tokenized:
    """Rows [start, stop) of the corpus table, read here, tokenized as title + " " + text (`document_texts`)."""
    began = time.process_time()
    frame = parquet_io.read_row_range(corpus, start, stop, ["title", "text"]).to_pandas()
    token_ids, lengths = _encode(document_texts(frame), _backend_of(spec))
    return token_ids, lengths, time.process_time() - began


def _backend(state: str, max_length: int, side: str):
    """A copy of the fast tokenizer, truncating as ``tokenizer(texts, truncation=True, max_length=...)`` does."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(state)
    backend.no_padding()
    backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=side)
    return backend


_BACKEND: tuple = (None, None)  # (spec, tokenizer) of this process


def _backend_of(spec: Spec):
    global _BACKEND
    if _BACKEND[0] != spec:
        _BACKEND = (spec, _backend(Path(spec.state).read_text(), spec.max_length, spec.side))
    return _BACKEND[1]


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


def _start_worker() -> None:
    os.environ[PARALLELISM] = "false"  # one core a process


def _encode(texts: list[str], backend) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the texts one after another, int32; tokens per text, int64), special tokens included."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no character offsets
    encodings = encode([str(text).strip() for text in texts])
    lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
    ids = itertools.chain.from_iterable(encoding.ids for encoding in encodings)  # each list freed once read: 2x faster
    return np.fromiter(ids, dtype=np.int32, count=int(lengths.sum())), lengths


def main(argv: list[str] | None = None) -> int:
    return run_stage("tokenize", TokenizeParams, tokenize, argv)


if __name__ == "__main__":
    sys.exit(main())
