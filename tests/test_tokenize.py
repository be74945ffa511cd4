"""Stage `tokenize`: the ids of `token_chunk` (the tokenizer's own call), read in batches, the same bytes on any
number of processes, and every stage's summary.json resources block (run through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages import tokenize
from stages.ml.models import document_texts, load_tokenizer, token_chunk
from stages.core.resources import available_threads
from stages.core.tables import read_corpus
from stages.core.artifacts import CORPUS


def run_cli(prepared: Path, out: Path, max_length: int = 64) -> dict:
    params = json.dumps({"model": "bundled", "max_length": max_length})
    argv = [str(out), "--no-check-key", "--params", params, "--inputs", json.dumps({"prepared": str(prepared)})]
    assert tokenize.main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_ids_equal_the_tokenizers_own_call_and_bytes_equal_for_any_number_of_threads(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize, "CHUNK", 40)  # several chunks of several tasks, so the pool runs some at once
    monkeypatch.setattr(tokenize, "TASK", 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = run_cli(prepared, tmp_path / "one")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    two = run_cli(prepared, tmp_path / "two")
    assert (tmp_path / "one" / tokenize.TOKENS).read_bytes() == (tmp_path / "two" / tokenize.TOKENS).read_bytes()
    assert one["resources"]["threads"] == 1 and two["resources"]["threads"] == min(2, available_threads())

    corpus = read_corpus(prepared)
    expected_ids, expected_lengths = token_chunk(load_tokenizer("bundled"), document_texts(corpus), 64)
    table = pq.read_table(tmp_path / "two" / tokenize.TOKENS)
    assert table["id"].to_pylist() == corpus["doc_id"].tolist()
    assert pq.ParquetFile(tmp_path / "two" / tokenize.TOKENS).metadata.row_group(0).num_rows == 40
    lengths = np.array([len(row) for row in table["input_ids"].to_pylist()])
    np.testing.assert_array_equal(lengths, expected_lengths)
    np.testing.assert_array_equal(np.concatenate(table["input_ids"].to_pylist()), expected_ids)
    assert two["rows"] == len(corpus) and two["tokens"] == int(expected_lengths.sum())
    ids, texts = corpus["doc_id"].tolist(), document_texts(corpus)  # the in-memory entry point writes the same file
    assert tokenize.write_tokens(load_tokenizer("bundled"), ids, texts, 64, tmp_path / "t") == two["tokens"]
    assert (tmp_path / "t").read_bytes() == (tmp_path / "two" / tokenize.TOKENS).read_bytes()


def test_corpus_is_read_in_chunks_of_exactly_the_size_across_row_groups(prepared, tmp_path):
    corpus = read_corpus(prepared)
    pq.write_table(pa.Table.from_pandas(corpus, preserve_index=False), tmp_path / CORPUS, row_group_size=5)
    chunks = list(tokenize.corpus_chunks(tmp_path / CORPUS, 7))
    assert [len(ids) for ids, _ in chunks[:-1]] == [7] * (len(chunks) - 1) and 0 < len(chunks[-1][0]) <= 7
    assert sum((ids for ids, _ in chunks), []) == corpus["doc_id"].tolist()
    assert sum((texts for _, texts in chunks), []) == document_texts(corpus)


def test_summary_records_wall_time_items_per_second_and_peak_memory(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    summary = run_cli(prepared, tmp_path / "out")
    block = summary["resources"]
    assert summary["items"] == {"documents": summary["rows"], "tokens": summary["tokens"]} == block["items"]
    assert 0 < block["wall_s"] < 600 and block["threads"] == 1
    rate = block["items_per_s"]["tokens"]
    assert abs(rate - summary["tokens"] / block["wall_s"]) <= 0.01 * rate + 1
    assert 30 < block["peak_rss_mib"] < 16_000 and block["peak_rss_children_mib"] >= 0
    assert block["peak_gpu_mib"] is None or block["peak_gpu_mib"] >= 0  # None without CUDA
