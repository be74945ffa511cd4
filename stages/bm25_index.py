"""Stage `bm25_index`: the BM25 index of the corpus (bm25s over title + text), built once for every split's run.

Input: ``prepared`` (a `prepare` artifact). Output: bm25s' own index files (``bm25s.BM25.load(artifact)`` reads
them; the vocabulary is numbered in token order, so the same corpus and settings give the same bytes),
``doc_ids.parquet`` (the corpus ids in the index's row order) and ``settings.json`` (how queries must be tokenized).
`stages.ml.lexical.load_index` reads it back for the `bm25` stage.

The build uses every core the stage is given (`stages.core.resources.available_threads`): each of that many worker
processes (spawned) reads its own range of corpus rows and returns their term counts as arrays, with a vocabulary
of its own as an Arrow array (`stages.ml.lexical.TermCounter`: bm25s.tokenize's terms). This process numbers the
union of the vocabularies in token order (Arrow), computes bm25s' weights on whole arrays on its threads
(`term_weights`, `posting_weights`: the float32 values `bm25s.BM25.index` computes a document at a time in Python,
45 of the 98 s one-thread build at 1M passages) and transposes them into bm25s' CSC matrix (scipy). The files are
the same bytes as bm25s' own build, for any number of threads (tests/test_bm25_index.py).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .core import parquet_io
from .core.artifacts import BM25_SETTINGS, CORPUS, DOC_IDS_FILE
from .core.cli import run_stage
from .core.errors import DataError
from .core.resources import available_threads
from .core.tables import read_corpus, write_table
from .ml.lexical import TermCounter, TermCounts, import_bm25s, posting_weights, term_weights, tokenizer_options

VERSION = 1
log = logging.getLogger("stages.bm25_index")

CHUNK = 16384  # documents a worker turns into Python strings and tokenizes at a time
BLOCK = 1 << 20  # postings weighed at a time


@dataclass
class Bm25IndexParams:
    k1: float
    b: float
    method: str
    """bm25s scoring variant: lucene, robertson, atire, bm25l, bm25+."""
    stopwords: str
    """bm25s stopword list ('en', 'german', ...), or '' for none."""
    stemmer: str
    """Snowball stemmer language (PyStemmer), or '' for none."""


def build_index(params: Bm25IndexParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    bm25s = import_bm25s()
    tokenizer_options(params.stopwords, params.stemmer)  # a ConfigError here, not in a worker
    started = time.perf_counter()
    corpus = Path(inputs["prepared"]) / CORPUS
    total = parquet_io.open_file(corpus).metadata.num_rows
    threads = min(available_threads(), max(1, -(-total // CHUNK)))  # no process without a chunk
    counts = count_corpus(corpus, total, params.stopwords, params.stemmer, threads)
    if not counts.vocabulary:
        raise DataError("no document has a term to index", path=corpus, fix="check the corpus texts")
    tokenized = time.perf_counter()
    retriever = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
    tokens = int(counts.lengths.sum())
    fill_index(retriever, counts, threads)
    indexed = time.perf_counter()
    retriever.save(out_dir, show_progress=False)
    write_table(read_corpus(inputs["prepared"], columns=["doc_id"]), out_dir / DOC_IDS_FILE)
    terms, postings = len(counts.vocabulary), len(retriever.scores["data"])
    (out_dir / BM25_SETTINGS).write_text(json.dumps({**asdict(params), "documents": total, "terms": terms}) + "\n")
    seconds = time.perf_counter() - started
    log.info("bm25_index: %d documents, %d terms, %d postings in %.1f s on %d threads (tokenized in %.1f s)",
             total, terms, postings, seconds, threads, tokenized - started)
    return {
        "items": {"documents": total, "postings": int(postings)},
        "documents": total,
        "terms": terms,
        "postings": postings,
        "tokens": tokens,
        "threads": threads,
        "tokenize_seconds": round(tokenized - started, 3),
        "tokenize_cpu_seconds": round(counts.cpu_seconds, 3),  # the workers' (reading and counting; per-core rate)
        "cpu_tokens_per_s": round(tokens / counts.cpu_seconds) if counts.cpu_seconds > 0 else None,
        "index_seconds": round(indexed - tokenized, 3),
        "seconds": round(seconds, 3),
    }


def count_corpus(corpus: Path, total: int, stopwords: str, stemmer: str, threads: int) -> TermCounts:
    """Every document's term counts, in corpus order, with the corpus vocabulary in token order: ``threads`` ranges
    of rows, each counted by a worker process (in this process for one thread)."""
    bounds = [total * part // threads for part in range(threads + 1)]
    ranges = list(zip(bounds[:-1], bounds[1:]))
    if threads <= 1:
        parts = [count_rows(corpus, *ranges[0], stopwords, stemmer)]
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        with ProcessPoolExecutor(threads, mp_context=context) as pool:
            tasks = [pool.submit(count_rows, corpus, start, stop, stopwords, stemmer) for start, stop in ranges]
            parts = [task.result() for task in tasks]
    return renumbered(parts)


def count_rows(corpus: Path, start: int, stop: int, stopwords: str, stemmer: str) -> TermCounts:
    """Rows [start, stop) of the corpus as term counts (title + " " + text, as bm25s.tokenize tokenizes them), read
    a row group at a time, tokenized CHUNK documents at a time."""
    began = time.process_time()
    counter, parts = TermCounter(stopwords, stemmer), []
    metadata = parquet_io.open_file(corpus).metadata
    ends = np.cumsum([metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)])
    cuts = [start, *(int(end) for end in ends if start < end < stop), stop]
    for first, last in zip(cuts[:-1], cuts[1:]):
        table = parquet_io.read_row_range(corpus, first, last, ["title", "text"])
        for offset in range(0, table.num_rows, CHUNK):
            chunk = table.slice(offset, CHUNK)
            titles, texts = chunk.column("title").to_pylist(), chunk.column("text").to_pylist()
            parts.append(counter.count([f"{title or ''} {text or ''}" for title, text in zip(titles, texts)]))
    counts = TermCounts.joined(parts or [counter.count([])], pa.array(counter.vocabulary, pa.string()))
    counts.cpu_seconds = time.process_time() - began
    return counts


def renumbered(parts: list[TermCounts]) -> TermCounts:
    """The parts one after another, their terms numbered in the union of their vocabularies (Arrow arrays) in token
    order: Arrow sorts UTF-8 bytewise, which is code point order, as Python's sort; a thread a part renumbers."""
    union = pc.unique(pa.chunked_array([part.vocabulary for part in parts], pa.string()))
    vocabulary = union.take(pc.sort_indices(union))

    def renumber(part: TermCounts) -> None:
        columns = pc.index_in(part.vocabulary, value_set=vocabulary).to_numpy(zero_copy_only=False)
        part.terms = columns.astype(np.int32)[part.terms]

    with ThreadPoolExecutor(len(parts)) as pool:  # Arrow and numpy let go of the GIL
        list(pool.map(renumber, parts))
    return TermCounts.joined(parts, vocabulary.to_pylist())


def fill_index(retriever, counts: TermCounts, threads: int) -> None:
    """``retriever`` as `bm25s.BM25.index` of the documents leaves it, but for its vocabulary, numbered in token
    order (bm25s numbers stems in set order, which changes from one process to the next)."""
    import scipy.sparse as sp

    terms, documents = len(counts.vocabulary), len(counts.lengths)
    average = counts.lengths.mean()  # np.float64, as bm25s' mean of the lengths
    idf, nonoccurrence = term_weights(retriever, np.bincount(counts.terms, minlength=terms), documents, average)
    indptr = np.zeros(documents + 1, dtype=np.int64)
    np.cumsum(counts.unique, out=indptr[1:])
    weights = np.empty(len(counts.terms), dtype=retriever.dtype)

    def weigh(first: int, last: int) -> None:
        block = TermCounts([], counts.lengths[first:last], counts.unique[first:last],
                           counts.terms[indptr[first] : indptr[last]], counts.counts[indptr[first] : indptr[last]])
        weights[indptr[first] : indptr[last]] = posting_weights(retriever, block, average, idf, nonoccurrence)

    cuts = np.unique(np.searchsorted(indptr, np.arange(0, indptr[-1], BLOCK))).tolist()  # documents, from 0
    with ThreadPoolExecutor(threads) as pool:  # numpy lets go of the GIL
        list(pool.map(weigh, cuts, cuts[1:] + [documents]))
    counts.counts = None
    matrix = sp.csr_matrix((weights, counts.terms, indptr), shape=(documents, terms)).tocsc()
    del weights
    retriever.scores = {
        "data": matrix.data,
        "indices": matrix.indices.astype(retriever.int_dtype, copy=False),
        "indptr": matrix.indptr.astype(np.int64, copy=False),
        "num_docs": documents,
    }
    retriever.vocab_dict = dict(zip(counts.vocabulary, range(terms)))
    retriever.vocab_dict[""] = terms  # bm25s' empty token: past the last column, matches no document
    retriever.unique_token_ids_set = set(range(terms + 1))
    retriever.nonoccurrence_array = nonoccurrence


def main(argv: list[str] | None = None) -> int:
    return run_stage("bm25_index", Bm25IndexParams, build_index, argv)


if __name__ == "__main__":
    sys.exit(main())
