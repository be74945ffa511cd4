"""Stage `tokenize`: the ids of `token_chunk` (the tokenizer's own call), each process reading its own rows, the same
bytes on any number of processes, and every stage's summary.json resources block (run through the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages import tokenize
from stages.ml.models import document_texts, load_tokenizer, token_chunk
from stages.core.resources import available_threads
from stages.core.tables import read_corpus
from stages.core.artifacts import CORPUS

ROOT = Path(__file__).resolve().parent.parent


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


def test_processes_read_their_own_rows_across_row_groups_into_the_same_bytes(prepared, tmp_path, monkeypatch):
    corpus = read_corpus(prepared)  # row groups of 7: tasks and chunks start inside them and span them
    (tmp_path / "odd").mkdir()
    pq.write_table(pa.Table.from_pandas(corpus, preserve_index=False), tmp_path / "odd" / CORPUS, row_group_size=7)
    monkeypatch.setattr(tokenize, "CHUNK", 12)
    monkeypatch.setattr(tokenize, "TASK", 5)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    summary = run_cli(tmp_path / "odd", tmp_path / "out")
    tokens = tmp_path / "out" / tokenize.TOKENS
    assert pq.ParquetFile(tokens).metadata.num_row_groups == -(-len(corpus) // 12)
    ids, texts = corpus["doc_id"].tolist(), document_texts(corpus)
    assert tokenize.write_tokens(load_tokenizer("bundled"), ids, texts, 64, tmp_path / "t") == summary["tokens"]
    assert (tmp_path / "t").read_bytes() == tokens.read_bytes()
    assert summary["cpu_seconds"]["workers"] > 0 and summary["cpu_seconds"]["main"] > 0


def test_a_worker_reads_and_tokenizes_its_rows_without_torch(prepared, tmp_path):
    state = tmp_path / "tokenizer.json"
    state.write_text(load_tokenizer("bundled").backend_tokenizer.to_str())
    code = (
        "import sys; from stages import tokenize as t; "
        f"ids, lengths, _ = t._encode_rows(t.Spec({str(state)!r}, 64, 'right'), {str(prepared / CORPUS)!r}, 3, 9); "
        "print(len(lengths), int(lengths.sum()) == len(ids), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["6", "True", "False"]


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
