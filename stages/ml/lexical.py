"""BM25 with bm25s: its tokenizer with the index's settings, and a `bm25_index` artifact read back (written by the
`bm25_index` stage, searched by the `bm25` stage).

For the index, `TermCounter` gives bm25s.tokenize's terms as arrays of term counts (an ASCII text split by a byte
table, ~2.5x faster than the regular expression, which other texts keep), and `term_weights` and `posting_weights`
compute `bm25s.BM25.index`'s float32 weights from them on whole arrays (tests/test_bm25_index.py checks both)."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..core import parquet_io
from ..core.artifacts import BM25_SETTINGS, DOC_IDS_FILE
from ..core.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    import scipy.sparse

# bm25s' own file names in the artifact (BM25.save)


VOCAB, NONOCCURRENCE = "vocab.index.json", "nonoccurrence_array.index.npy"
MATRIX = {"data": "data.csc.index.npy", "indices": "indices.csc.index.npy", "indptr": "indptr.csc.index.npy"}


def import_bm25s():
    os.environ["JAX_PLATFORMS"] = "cpu"  # bm25s imports JAX when installed: keep it off the GPU (no preallocation)
    import bm25s

    return bm25s


def tokenize(texts: list[str], stopwords: str, stemmer: str, ids: bool = False):
    """bm25s' tokenizer with the index's settings: token lists, or (``ids``) bm25s' Tokenized (ids, vocabulary)."""
    bm25s = import_bm25s()
    options = tokenizer_options(stopwords, stemmer)
    return bm25s.tokenize(texts, return_ids=ids, **options)


def tokenizer_options(stopwords: str, stemmer: str) -> dict:
    """bm25s.tokenize's options for the settings, tried on a word (a ConfigError where they are not usable)."""
    import Stemmer

    bm25s = import_bm25s()
    options = {"stopwords": stopwords or None, "show_progress": False}
    try:
        options["stemmer"] = Stemmer.Stemmer(stemmer) if stemmer else None
        bm25s.tokenize(["probe"], **options)
    except (KeyError, ValueError) as error:
        raise ConfigError(
            f"bm25 tokenizer settings stopwords={stopwords!r}, stemmer={stemmer!r} are not usable: {error}",
            fix="use a PyStemmer language (Stemmer.algorithms()) and a bm25s stopword language, or '' for none",
        ) from None
    return options


SPLIT = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s.tokenize's token_pattern
_WORD_BYTES = b"0123456789abcdefghijklmnopqrstuvwxyz_"
ASCII_WORDS = bytes(
    code + 32 if 65 <= code <= 90 else code if code in _WORD_BYTES else 32 for code in range(256)
)  # an ASCII text lowered, every byte not of a word a space: its .split() is SPLIT's words, and 1-letter ones


@dataclass
class TermCounts:
    """Documents as bm25s' tokenizer sees them, in arrays: each document's distinct terms (ids into ``vocabulary``,
    a list or an Arrow array of strings) and how often each occurs, one document after another; ``unique`` terms and
    ``lengths`` tokens a document."""

    vocabulary: Sequence[str]
    lengths: np.ndarray
    unique: np.ndarray
    terms: np.ndarray
    counts: np.ndarray
    cpu_seconds: float = 0.0
    """The processor time counting them took (all parts')."""

    @staticmethod
    def joined(parts: list[TermCounts], vocabulary: Sequence[str]) -> TermCounts:
        """Parts whose terms are ids into the same ``vocabulary``, one after another."""
        arrays = [np.concatenate([getattr(p, name) for p in parts]) for name in ("lengths", "unique", "terms", "counts")]
        return TermCounts(vocabulary, *arrays, cpu_seconds=sum(part.cpu_seconds for part in parts))


class _Words(dict):
    """word (str, or bytes of an ASCII text) -> term id, -1 for a stopword or a 1-letter word; a new word is stemmed
    once, its stem numbered where first seen."""

    def __init__(self, stopwords: list[str], stem):
        super().__init__()
        self.stopwords, self.stem, self.stems = set(stopwords), stem, {}

    def __missing__(self, word: str | bytes) -> int:
        text = word.decode() if isinstance(word, bytes) else word
        if len(text) < 2 or text in self.stopwords:
            term = -1
        else:
            term = self.stems.setdefault(self.stem(text), len(self.stems))
        self[word] = term
        return term


@contextlib.contextmanager
def _gc_paused():
    """No garbage collection: the lists made meanwhile hold no cycles, and collecting only walks them (~30%)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class TermCounter:
    """bm25s.tokenize's terms (lower case, its token pattern, stopwords left out, stems) counted per document, with a
    vocabulary of its own that grows over the calls (`vocabulary`)."""

    def __init__(self, stopwords: str, stemmer: str):
        from bm25s.tokenization import _infer_stopwords

        options = tokenizer_options(stopwords, stemmer)
        stem = options["stemmer"].stemWord if options["stemmer"] is not None else str
        self.words = _Words(list(_infer_stopwords(options["stopwords"])), stem)

    @property
    def vocabulary(self) -> list[str]:
        return list(self.words.stems)

    def count(self, texts: list[str]) -> TermCounts:
        table = ASCII_WORDS
        with _gc_paused():
            words = [text.encode().translate(table).split() if text.isascii() else SPLIT(text.lower()) for text in texts]
            sizes = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
            words = itertools.chain.from_iterable(words)
            flat = np.fromiter(map(self.words.__getitem__, words), dtype=np.int64, count=int(sizes.sum()))
            del words
        kept = flat >= 0  # stopwords out
        documents = np.repeat(np.arange(len(texts), dtype=np.int64), sizes)[kept]
        width = max(1, len(self.words.stems))
        pairs, counts = np.unique(documents * width + flat[kept], return_counts=True)
        lengths = np.bincount(documents, minlength=len(texts))
        unique = np.bincount(pairs // width, minlength=len(texts))
        terms = (pairs % width).astype(np.int32)
        return TermCounts([], lengths, unique, terms, counts.astype(np.int32))


def term_weights(retriever, df: np.ndarray, documents: int, average: np.floating) -> tuple[np.ndarray, np.ndarray | None]:
    """bm25s' idf of each term and, for bm25l and bm25+, its weight in a document without it (float32), as
    `bm25s.BM25.index` computes them from the document frequencies ``df``: once a distinct frequency."""
    from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer

    idf_of = _select_idf_scorer(retriever.idf_method)
    values, inverse = np.unique(df, return_inverse=True)
    idf = np.array([idf_of(int(value), N=documents) for value in values], dtype=np.float64)
    if retriever.method not in retriever.methods_requiring_nonoccurrence:
        return idf.astype(retriever.dtype)[inverse], None
    absent = _select_tfc_scorer(retriever.method)(
        tf_array=0, l_d=average, l_avg=average, k1=retriever.k1, b=retriever.b, delta=retriever.delta
    )
    nonoccurrence = np.array([value * absent for value in idf.tolist()], dtype=np.float64)
    return idf.astype(retriever.dtype)[inverse], nonoccurrence.astype(retriever.dtype)[inverse]


def posting_weights(retriever, counts: TermCounts, average: np.floating, idf: np.ndarray, nonoccurrence) -> np.ndarray:
    """Each (document, term) pair's BM25 weight (float32), as `bm25s.BM25.index` computes it: the same operations on
    the same types (a document's length a Python int there, an int64 here), on arrays, not a document at a time."""
    from bm25s.scoring import _select_tfc_scorer

    tfc = _select_tfc_scorer(retriever.method)(
        tf_array=counts.counts.astype(retriever.dtype),
        l_d=np.repeat(counts.lengths.astype(np.int64), counts.unique),
        l_avg=average,
        k1=retriever.k1,
        b=retriever.b,
        delta=retriever.delta,
    )
    weights = idf[counts.terms] * tfc
    if nonoccurrence is not None:
        weights -= nonoccurrence[counts.terms]
    return weights.astype(retriever.dtype)


@dataclass
class Bm25Index:
    """A `bm25_index` artifact in memory: ``term_docs`` is the (terms x documents) CSR matrix of BM25 weights."""

    term_docs: scipy.sparse.csr_matrix
    vocab: dict[str, int]
    doc_ids: np.ndarray
    settings: dict
    nonoccurrence: np.ndarray | None


def load_index(artifact: Path) -> Bm25Index:
    import scipy.sparse as sp

    artifact = Path(artifact)
    for name in [*MATRIX.values(), VOCAB, DOC_IDS_FILE, BM25_SETTINGS]:
        if not (artifact / name).is_file():
            raise ArtifactError(f"bm25 index lacks {name}", path=artifact, fix="rerun the bm25_index stage")
    arrays = {key: np.load(artifact / name) for key, name in MATRIX.items()}
    settings = json.loads((artifact / BM25_SETTINGS).read_text())
    doc_ids = parquet_io.read_table(artifact / DOC_IDS_FILE, columns=["doc_id"]).column("doc_id").to_numpy(zero_copy_only=False)
    terms, documents = len(arrays["indptr"]) - 1, len(doc_ids)
    if documents != settings["documents"] or terms != settings["terms"]:
        raise ArtifactError("bm25 index files disagree on its size", path=artifact, fix="rerun the bm25_index stage")
    vocab = {token: column for token, column in json.loads((artifact / VOCAB).read_text()).items() if column < terms}
    nonoccurrence = np.load(artifact / NONOCCURRENCE) if (artifact / NONOCCURRENCE).is_file() else None
    term_docs = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=(terms, documents))
    return Bm25Index(term_docs, vocab, doc_ids, settings, nonoccurrence)
