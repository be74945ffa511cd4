"""Damage is never read: every Parquet file carries page checksums that every read verifies, and every Parquet read
and write of the package goes through `stages.core.parquet_io`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core import parquet_io, settings
from stages.core.artifacts import EMBEDDINGS, RUN_PARQUET
from stages.core.errors import ArtifactError
from stages.core.tables import iter_embeddings, read_run, write_embeddings, write_run, write_table
from stages.score import ScoreParams, score

ROOT = Path(__file__).resolve().parent.parent
DIRECT = re.compile(r"\bpq\.(read_table|ParquetFile|write_table|ParquetWriter|read_metadata|read_schema)\b|"
                    r"\bpd\.read_parquet\b|\.to_parquet\(")


def damage(path: Path, count: int = 8, at: int | None = None) -> None:
    """Flip ``count`` bytes at ``at`` (default: the middle of the file), keeping its size and mtime (what no mtime
    check sees)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def a_run(folder: Path, queries: int = 300) -> Path:
    folder.mkdir(parents=True)
    rows = [(f"q{q}", f"d{(q * 7 + r) % 500}", r + 1, float(100 - r)) for q in range(queries) for r in range(20)]
    write_run(pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"]), folder, "t")
    return folder


def test_no_module_reads_or_writes_parquet_around_the_checks():
    direct = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "stages").rglob("*.py"))
        if path.name != "parquet_io.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DIRECT.search(line)
    ]
    assert not direct, f"Parquet read or written without page checksums: {direct}"


def test_a_damaged_run_stops_the_reader_naming_the_file_and_the_fix(tmp_path):
    run = a_run(tmp_path / "run")
    assert len(read_run(run)) == 6000
    damage(run / RUN_PARQUET)
    with pytest.raises(ArtifactError, match="damaged file, not read") as caught:
        read_run(run)
    assert caught.value.path == str(run / RUN_PARQUET) and "remove its artifact" in caught.value.fix


def test_score_refuses_a_damaged_run_instead_of_scoring_garbage(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    qrels = pd.DataFrame({"split": "test", "query_id": [f"q{q}" for q in range(300)], "doc_id": "d0", "relevance": 1})
    write_table(qrels, prepared / "qrels.parquet")
    run = a_run(tmp_path / "run")
    damage(run / RUN_PARQUET)
    params = settings.params(ScoreParams, "score", split="test", measures=["nDCG@10"])
    (tmp_path / "score").mkdir()
    with pytest.raises(ArtifactError, match="damaged file"):
        score(params, {"prepared": prepared, "run": run}, tmp_path / "score")


def test_streamed_embeddings_are_checked_batch_by_batch(tmp_path):
    path = tmp_path / EMBEDDINGS
    write_embeddings(path, [f"d{i}" for i in range(4000)], np.random.default_rng(0).normal(size=(4000, 16)))
    assert sum(len(ids) for ids, _ in iter_embeddings([path], batch_rows=512)) == 4000
    column = pq.ParquetFile(path).metadata.row_group(0).column(1)
    values = column.data_page_offset + column.total_compressed_size - 4096  # among the vectors, past the levels
    damage(path, count=8, at=values)
    unchecked = pq.read_table(path).column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    assert len(unchecked) == 4000 * 16  # read without the checksums, the damage passes for data
    with pytest.raises(ArtifactError, match="damaged file"):
        list(iter_embeddings([path], batch_rows=512))


def test_a_missing_file_is_named_not_a_traceback(tmp_path):
    with pytest.raises(ArtifactError, match="missing table"):
        parquet_io.read_table(tmp_path / "nothing.parquet")


def test_a_row_range_is_read_exactly_from_the_row_groups_that_hold_it(tmp_path):
    path = tmp_path / "rows.parquet"
    write_table(pd.DataFrame({"n": np.arange(100), "s": [f"r{i}" for i in range(100)]}), path)
    pq.write_table(pq.read_table(path), path, row_group_size=7)  # groups of 7: ranges start and end inside them
    for start, stop in [(0, 100), (0, 7), (3, 4), (5, 23), (14, 21), (98, 100), (40, 40), (90, 200)]:
        table = parquet_io.read_row_range(path, start, stop, ["s", "n"])
        assert table.column_names == ["s", "n"] and table["n"].to_pylist() == list(range(start, min(stop, 100)))


def test_a_row_range_reads_its_rows_across_row_groups(tmp_path):
    path = tmp_path / "rows.parquet"
    parquet_io.write_table(pa.table({"a": np.arange(100), "b": [str(i) for i in range(100)]}), path, row_group_size=30)
    for start, stop in ((0, 100), (0, 30), (25, 65), (30, 60), (99, 100), (40, 40)):
        table = parquet_io.read_row_range(path, start, stop, ["a"])
        assert table.column_names == ["a"] and table.column("a").to_pylist() == list(range(start, stop))
    assert parquet_io.read_row_range(path, 10, 12).column("b").to_pylist() == ["10", "11"]
