"""BM25 with bm25s: its tokenizer with the index's settings, and a `bm25_index` artifact read back (written by the
`bm25_index` stage, searched by the `bm25` stage)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
    return bm25s.tokenize(texts, return_ids=ids, **options)


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
