"""Stage bm25_index on every core: the same files as the single-threaded build with bm25s' own tokenizer and
`bm25s.BM25.index` (the stage before it had worker processes), for every scoring method and any number of threads;
its term counts are bm25s.tokenize's tokens, ASCII fast path and Unicode texts alike."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import stages.bm25_index
from stages.bm25_index import Bm25IndexParams, build_index
from stages.core import parquet_io, settings
from stages.core.artifacts import BM25_SETTINGS, CORPUS, DOC_IDS_FILE
from stages.core.tables import read_corpus, write_table
from stages.ml.lexical import TermCounter, import_bm25s, tokenize

METHODS = ["lucene", "robertson", "atire", "bm25l", "bm25+"]
TRICKY = [
    "The CAT's 2 cats_and DOGS; a I x9 ÉCOLE école naïve Straße ΟΔΟΣ οδος İstanbul",
    "tabs\tand\nnew\x0blines \x1c sep\u00a0nbsp “curly” quotes — dash 3.14 1,000 e-mail x_y __ _a",
    "the of and a",  # stopwords only: no token
    "",
    "日本語のテキスト 中文 한국어 mixed ascii",
    "ÀÉÎÕÜ àéîõü ǅ ǈ ﬁle ﬃ ⅷ ² ٣ ௧ 𝐀𝐁 ΣΑΣ σας",
]


def reference_build(params: Bm25IndexParams, prepared: Path, out: Path) -> None:
    """The stage as it was: bm25s.tokenize and `bm25s.BM25.index` in one process, the vocabulary renumbered after."""
    corpus = read_corpus(prepared)
    texts = (corpus["title"] + " " + corpus["text"]).str.strip().tolist()
    retriever = import_bm25s().BM25(k1=params.k1, b=params.b, method=params.method)
    retriever.index(tokenize(texts, params.stopwords, params.stemmer, ids=True), show_progress=False)
    number_in_token_order(retriever)
    retriever.save(out, show_progress=False)
    write_table(corpus[["doc_id"]], out / DOC_IDS_FILE)
    terms = len(retriever.scores["indptr"]) - 1
    (out / BM25_SETTINGS).write_text(json.dumps({**asdict(params), "documents": len(corpus), "terms": terms}) + "\n")


def number_in_token_order(retriever) -> None:
    scores, vocab = retriever.scores, retriever.vocab_dict
    indptr = scores["indptr"]
    terms = len(indptr) - 1
    tokens = sorted(token for token, column in vocab.items() if column < terms)
    order = np.array([vocab[token] for token in tokens], dtype=np.int64)
    starts, lengths = indptr[order], np.diff(indptr)[order]
    new_indptr = np.zeros_like(indptr)
    np.cumsum(lengths, out=new_indptr[1:])
    gather = np.arange(new_indptr[-1], dtype=np.int64) - np.repeat(new_indptr[:-1] - starts, lengths)
    scores.update(data=scores["data"][gather], indices=scores["indices"][gather], indptr=new_indptr)
    renumbered = {token: column for column, token in enumerate(tokens)}
    renumbered[""] = terms
    retriever.vocab_dict = renumbered
    if retriever.nonoccurrence_array is not None:
        retriever.nonoccurrence_array = retriever.nonoccurrence_array[order]


def hashes(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.iterdir() if p.name not in ("manifest.json", "summary.json"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def tricky_prepared(prepared, tmp_path_factory) -> Path:
    """The slice's corpus with the tricky texts among it, in row groups of 37 rows (ranges cross them)."""
    corpus = read_corpus(prepared)
    extra = pd.DataFrame({"doc_id": [f"tricky-{i}" for i in range(len(TRICKY))], "title": "Τίτλος", "text": TRICKY})
    corpus = pd.concat([corpus.iloc[:100], extra, corpus.iloc[100:]], ignore_index=True)
    out = tmp_path_factory.mktemp("tricky-prepared")
    table = pa.Table.from_pandas(corpus[["doc_id", "title", "text"]], preserve_index=False)
    parquet_io.write_table(table, out / CORPUS, row_group_size=37)
    return out


def test_term_counts_are_bm25s_tokens(tricky_prepared):
    texts = [f"{t} {x}" for t, x in read_corpus(tricky_prepared)[["title", "text"]].itertuples(index=False)]
    for stopwords, stemmer in (("en", "english"), ("", ""), ("german", "german")):
        expected = tokenize(texts, stopwords, stemmer)
        counter = TermCounter(stopwords, stemmer)
        counts = [counter.count(texts[:50]), counter.count(texts[50:])]  # the vocabulary grows over calls
        vocabulary = np.array(counter.vocabulary, dtype=object)
        found = []
        for part in counts:
            offsets = np.concatenate([[0], np.cumsum(part.unique)])
            for doc in range(len(part.lengths)):
                span = slice(offsets[doc], offsets[doc + 1])
                found.append(Counter(dict(zip(vocabulary[part.terms[span]], part.counts[span].tolist()))))
                assert part.lengths[doc] == sum(found[-1].values())
        assert found == [Counter(tokens) for tokens in expected]


@pytest.mark.parametrize("method", METHODS)
def test_the_files_are_the_single_threaded_bm25s_build(tricky_prepared, method, tmp_path):
    params = settings.params(Bm25IndexParams, "bm25", method=method)
    reference_build(params, tricky_prepared, tmp_path / "reference")
    summary = build_index(params, {"prepared": tricky_prepared}, tmp_path / "stage")
    assert hashes(tmp_path / "stage") == hashes(tmp_path / "reference")
    assert ("nonoccurrence_array.index.npy" in hashes(tmp_path / "stage")) == (method in ("bm25l", "bm25+"))
    assert summary["threads"] == 1 and summary["documents"] == len(read_corpus(tricky_prepared))


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_threads_do_not_change_the_files(tricky_prepared, method, tmp_path, monkeypatch):
    """Three worker processes, each its own range of rows across row groups, the weights in blocks of 97 postings."""
    params = settings.params(Bm25IndexParams, "bm25", method=method)
    build_index(params, {"prepared": tricky_prepared}, tmp_path / "one")
    monkeypatch.setattr(stages.bm25_index, "CHUNK", 40)  # the threads: one per 40 documents at most
    monkeypatch.setattr(stages.bm25_index, "BLOCK", 97)
    monkeypatch.setattr(stages.bm25_index, "available_threads", lambda: 3)
    summary = build_index(params, {"prepared": tricky_prepared}, tmp_path / "three")
    assert summary["threads"] == 3
    assert hashes(tmp_path / "three") == hashes(tmp_path / "one")
