"""Parquet files as every stage writes and reads them: each page carries a CRC checksum (written with it) that every
read verifies, so damage to a finished file is never read as data, even where its size and mtime were kept. A damaged
or unreadable file stops the reader with an `ArtifactError` naming the file, its artifact and the fix.

Every Parquet read and write of the package goes through here (`tests/test_parquet_io.py` checks it).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ArtifactError

COMPRESSION = "zstd"


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn what pyarrow raises on a missing, damaged or unreadable file into an ArtifactError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise ArtifactError("missing table", path=path, fix="rerun the stage that writes it") from None
    except (OSError, pa.ArrowException) as error:
        artifact = Path(path).parent
        raise ArtifactError(
            f"damaged file, not read: {error}",
            path=path,
            fix=f"remove its artifact ({artifact}) and rerun, which rebuilds it; "
            "`python -m stages.core.store verify` checks every artifact",
        ) from None


def open_file(path: Path, **options: Any) -> pq.ParquetFile:
    """A Parquet file whose pages are checked as they are read (``pre_buffer`` and the like pass through)."""
    with reading(path):
        return pq.ParquetFile(path, page_checksum_verification=True, **options)


def read_table(path: Path, columns: list[str] | None = None, **options: Any) -> pa.Table:
    """The file's ``columns`` (all by default), each page checked; ``read_dictionary`` and the like pass through.
    Read as one file, not through ``pyarrow.dataset`` (which costs a process tens of ms more to import)."""
    with reading(path):
        return pq.ParquetFile(path, page_checksum_verification=True, **options).read(columns=columns)


def read_row_groups(file: pq.ParquetFile, path: Path, groups: list[int], **options: Any) -> pa.Table:
    with reading(path):
        return file.read_row_groups(groups, **options)


def iter_batches(path: Path, read_dictionary: list[str] | None = None, **options: Any) -> Iterator[pa.RecordBatch]:
    """The file's record batches (``batch_size``, ``columns``), each checked; opened without pre-buffering, which
    would keep every row group read until the end."""
    file = open_file(path, pre_buffer=False, read_dictionary=read_dictionary)
    batches = file.iter_batches(**options)
    while True:
        with reading(path):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def read_row_range(path: Path, start: int, stop: int, columns: list[str] | None = None) -> pa.Table:
    """Rows [start, stop) of a file: of the row groups that hold them, each decoded from its start up to ``stop`` only
    (Parquet has no cheaper way to a row inside a group)."""
    file = open_file(path, pre_buffer=False)
    columns = columns or file.schema_arrow.names
    batches, first = [], 0
    for number in range(file.num_row_groups):
        row, first = first, first + file.metadata.row_group(number).num_rows
        if row >= stop or first <= start:
            continue
        with reading(path):
            for batch in file.iter_batches(min(max(stop - start, 1), 4096), [number], columns, use_threads=False):
                if row + batch.num_rows > start:
                    batches.append(batch.slice(max(start - row, 0), stop - max(start, row)))
                row += batch.num_rows
                if row >= stop:
                    break
    return pa.Table.from_batches(batches, pa.schema([file.schema_arrow.field(name) for name in columns]))


def write_table(table: pa.Table, path: Path, **options: Any) -> None:
    pq.write_table(table, path, write_page_checksum=True, **{"compression": COMPRESSION, **options})


def writer(path: Path, schema: pa.Schema, **options: Any) -> pq.ParquetWriter:
    """A writer of row groups one after another (close it, or use it as a context manager)."""
    return pq.ParquetWriter(path, schema, write_page_checksum=True, **{"compression": COMPRESSION, **options})
