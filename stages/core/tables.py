"""Parquet I/O shared by all stages: the prepared dataset, runs (ranked lists) and embedding shards."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import parquet_io
from .artifacts import CORPUS, NEGATIVES, QRELS, QUERIES, RUN_PARQUET, RUN_TREC
from .errors import ArtifactError, DataError
from .resources import available_threads

NEGATIVES_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_ids", pa.list_(pa.string()))])
RUN_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("rank", pa.int32()), ("score", pa.float32())])


def write_table(frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    parquet_io.write_table(table, path)


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    if not Path(path).is_file():
        raise ArtifactError("missing table", path=path, fix="rerun the stage that writes it")
    return parquet_io.read_table(path, columns=columns).to_pandas()


def read_corpus(prepared: Path, columns: list[str] | None = None) -> pd.DataFrame:
    return _read(Path(prepared) / CORPUS, columns)


def read_queries(prepared: Path, split: str) -> pd.DataFrame:
    queries = _read(Path(prepared) / QUERIES)
    chosen = queries[queries["split"] == split].reset_index(drop=True)
    if chosen.empty:
        raise DataError(
            f"no queries in split {split!r}; splits present: {sorted(queries['split'].unique())}",
            path=Path(prepared) / QUERIES,
            fix="choose one of the present splits in the config",
        )
    return chosen


def read_qrels(prepared: Path, split: str) -> pd.DataFrame:
    qrels = _read(Path(prepared) / QRELS)
    return qrels[qrels["split"] == split].reset_index(drop=True)


def read_qrels_table(prepared: Path, split: str) -> pa.Table:
    """`read_qrels` as an Arrow table (query_id, doc_id, relevance), no frame made."""
    path = Path(prepared) / QRELS
    if not path.is_file():
        raise ArtifactError("missing table", path=path, fix="rerun the stage that writes it")
    qrels = parquet_io.read_table(path)
    return qrels.filter(pc.equal(qrels["split"], split)).select(["query_id", "doc_id", "relevance"])


def lookup(values: pa.Array | pa.ChunkedArray, value_set: pa.Array) -> np.ndarray:
    """The position of each value in ``value_set`` (int64), -1 where it is not there; a dictionary array's values are
    looked up once each, not once a row."""
    if isinstance(values, pa.ChunkedArray):
        return np.concatenate([np.zeros(0, np.int64)] + [lookup(chunk, value_set) for chunk in values.chunks])
    if pa.types.is_dictionary(values.type):
        return lookup(values.dictionary, value_set)[values.indices.to_numpy(zero_copy_only=False)]
    if values.type != value_set.type:
        values = values.cast(value_set.type)
    return pc.fill_null(pc.index_in(values, value_set=value_set), -1).to_numpy().astype(np.int64)


def qrels_dict(qrels: pd.DataFrame) -> dict[str, dict[str, int]]:
    judged: dict[str, dict[str, int]] = {}
    for query_id, doc_id, relevance in qrels[["query_id", "doc_id", "relevance"]].itertuples(index=False):
        judged.setdefault(query_id, {})[doc_id] = int(relevance)
    return judged


def write_run(run: pd.DataFrame, out_dir: Path, tag: str) -> None:
    """A run frame as `RunWriter` writes it, its rows sorted by (query_id, rank) first."""
    run = run.sort_values(["query_id", "rank"], kind="stable")
    with RunWriter(out_dir, tag) as writer:
        writer.write(*pa.Table.from_pandas(run[RUN_SCHEMA.names], preserve_index=False).columns)


class RunWriter:
    """Writes a run as Parquet (query_id, doc_id, rank, score) and as a TREC run file whose scores strictly decrease
    with rank (trec_eval and pytrec_eval ignore the rank column and break score ties by doc id), batch by batch.

    Each `write` takes whole queries, each query's rows together and in rank order; the rows are written in the
    order given. The TREC lines are made by ``threads`` threads, ``chunk_rows`` rows (whole queries) at a time,
    while another writes the Parquet rows. Use as a context manager:
    ``with RunWriter(out_dir, tag) as writer: writer.write(...)``.
    """

    def __init__(self, out_dir: Path, tag: str, chunk_rows: int = 1 << 20, threads: int | None = None):
        self.out_dir, self.tag, self.chunk_rows = Path(out_dir), tag, chunk_rows
        self.threads = threads or available_threads()
        self.rows = 0
        self._last_query: str | None = None

    def __enter__(self) -> "RunWriter":
        self._pool = ThreadPoolExecutor(self.threads + 1)  # + 1: the Parquet writer
        self._parquet = parquet_io.writer(self.out_dir / RUN_PARQUET, RUN_SCHEMA, use_dictionary=["query_id"])
        self._trec = open(self.out_dir / RUN_TREC, "wb")
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown()
        self._parquet.close()
        self._trec.close()

    def write(self, query_ids, doc_ids, ranks, scores) -> None:
        """Rows of whole queries: Arrow or numpy arrays (or sequences); scores in any float type (the TREC scores
        are rounded from them as given, the Parquet ones are float32)."""
        query_ids, doc_ids = _strings(query_ids), _strings(doc_ids)
        ranks, scores = _numbers(ranks, np.int32), _numbers(scores, np.float64)
        if not len(query_ids) == len(doc_ids) == len(ranks) == len(scores):
            raise ValueError("query_ids, doc_ids, ranks and scores differ in length")
        if not len(query_ids):
            return
        if query_ids[0].as_py() == self._last_query:
            raise ValueError(f"query {self._last_query!r} continues across two writes; write whole queries")
        self._last_query = query_ids[-1].as_py()
        table = pa.Table.from_arrays(
            [query_ids, doc_ids, pa.array(ranks), pa.array(scores.astype(np.float32))], schema=RUN_SCHEMA
        )
        parquet = self._pool.submit(self._parquet.write_table, table)
        bounds = _chunk_bounds(_query_numbers(query_ids), self.chunk_rows)
        parts = [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
        chunks = [(query_ids[p], doc_ids[p], ranks[p], scores[p], self.tag) for p in parts]
        for text in self._pool.map(_trec_lines, *zip(*chunks)):
            self._trec.write(text)
        parquet.result()
        self.rows += len(query_ids)


def _strings(values) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.cast(pa.string())
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return pa.array(values, pa.string())


def _numbers(values, dtype) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else values.to_numpy()
    return np.asarray(values).astype(dtype, copy=False)


def _query_numbers(query_ids: pa.Array) -> np.ndarray:
    """0, 1, ... per row: the number of the run of equal query ids it belongs to."""
    changes = pc.not_equal(query_ids[1:], query_ids[:-1]).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.cumsum(changes)])


def _chunk_bounds(numbers: np.ndarray, rows: int) -> np.ndarray:
    """Row numbers that cut the rows into chunks of about ``rows`` rows, at the first rows of queries."""
    starts = np.flatnonzero(np.concatenate([[True], numbers[1:] != numbers[:-1]]))
    cuts = starts[np.searchsorted(starts, np.arange(0, len(numbers), rows), side="right") - 1]
    return np.append(np.unique(cuts), len(numbers))


def _trec_lines(query_ids: pa.Array, doc_ids: pa.Array, ranks: np.ndarray, scores: np.ndarray, tag: str) -> pa.Buffer:
    """The TREC lines of whole queries, as one buffer of text."""
    micro = _lowered_micro(_query_numbers(query_ids), scores)
    whole, fraction = np.divmod(np.abs(micro), 1_000_000)
    fraction = pc.ascii_lpad(pa.array(fraction).cast(pa.string()), 6, "0")
    lines = pc.binary_join_element_wise(
        query_ids, " Q0 ", doc_ids, _rank_and_sign(ranks, micro < 0), pa.array(whole).cast(pa.string()), ".",
        fraction, f" {tag}\n", "",
    )  # fmt: skip
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2][offsets[0] : offsets[-1]]


def _rank_and_sign(ranks: np.ndarray, negative: np.ndarray) -> pa.Array:
    """' <rank> ' and the score's sign: ' 3 -'; from a table of all of them when ranks are small."""
    if ranks.min() < 0 or ranks.max() > 1 << 20:
        sign = pc.if_else(pa.array(negative), "-", "")
        return pc.binary_join_element_wise("", pa.array(ranks).cast(pa.string()), sign, " ")
    top = int(ranks.max()) + 1
    table = pa.array([f" {rank} {sign}" for sign in ("", "-") for rank in range(top)])
    return table.take(pa.array(ranks + top * negative.astype(ranks.dtype)))


def strictly_decreasing(query_ids: np.ndarray, scores: np.ndarray) -> pa.StringArray:
    """Scores rounded to 1e-6 and, where ties (or a rank order against the scores) would remain, lowered by 1e-6
    steps so that each query's scores strictly decrease in rank order; as fixed-point text."""
    micro = _lowered_micro(pd.factorize(np.asarray(query_ids))[0], scores)
    whole, fraction = np.divmod(np.abs(micro), 1_000_000)
    sign = pc.if_else(pa.array(micro < 0), "-", "")
    fraction = pc.ascii_lpad(pa.array(fraction).cast(pa.string()), 6, "0")
    return pc.binary_join_element_wise(sign, pa.array(whole).cast(pa.string()), ".", fraction, "")


def _lowered_micro(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`strictly_decreasing`'s scores in millionths (int64), rows grouped by ``groups`` (a number per row)."""
    micro = np.round(np.asarray(scores, dtype=np.float64) * 1e6).astype(np.int64)
    if len(groups) == 0:
        return micro
    # s'[r] = min over j <= r of (s[j] + j) - r, within each query: the largest sequence below s that drops by >= 1
    if np.all(groups[1:] >= groups[:-1]):  # each group's rows together: numpy only
        first = np.concatenate([[True], groups[1:] != groups[:-1]])
        number = np.cumsum(first) - 1
        position = np.arange(len(groups)) - np.flatnonzero(first)[number]
        return _segment_cummin(micro + position, number) - position
    position = pd.Series(groups).groupby(groups, sort=False).cumcount().to_numpy()
    return pd.Series(micro + position).groupby(groups, sort=False).cummin().to_numpy() - position


def _segment_cummin(values: np.ndarray, number: np.ndarray) -> np.ndarray:
    """The running minimum of ``values`` restarting where ``number`` (0, 0, 1, 1, 1, 2, ...) steps up."""
    low, span = int(values.min()), int(values.max()) - int(values.min()) + 1
    if (int(number[-1]) + 1) * span >= 1 << 62:  # the offsets below would overflow
        return pd.Series(values).groupby(number, sort=False).cummin().to_numpy()
    # each segment shifted below every earlier one: one running minimum over all of them stays within segments
    offset = number * span
    return np.minimum.accumulate(values - low - offset) + offset + low


def read_run(artifact: Path) -> pd.DataFrame:
    return _read(Path(artifact) / RUN_PARQUET)


def read_run_table(artifact: Path, columns: tuple[str, ...] = ("query_id", "doc_id", "rank")) -> pa.Table:
    """A run's ``columns`` as an Arrow table, query ids dictionary-encoded (as stored: a few distinct values) and no
    pandas conversion: 7M rows in under a second."""
    path = Path(artifact) / RUN_PARQUET
    if not path.is_file():
        raise ArtifactError("missing table", path=path, fix="rerun the stage that writes it")
    return parquet_io.read_table(path, columns=list(columns), read_dictionary=["query_id"])


def run_from_topk(query_ids: list[str], doc_ids: np.ndarray, indices: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """A run frame from top-k results: ``indices``/``scores`` are (queries, k) arrays of row numbers and scores."""
    count, k = indices.shape
    valid = indices >= 0
    return pd.DataFrame(
        {
            "query_id": np.repeat(np.asarray(query_ids, dtype=object), k)[valid.ravel()],
            "doc_id": np.asarray(doc_ids, dtype=object)[indices[valid]],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), count)[valid.ravel()],
            "score": scores[valid].astype(np.float32),
        }
    )


def run_table_from_topk(query_ids, doc_ids: pa.Array, indices: np.ndarray, scores: np.ndarray) -> pa.Table:
    """`run_from_topk` as an Arrow table (RUN_SCHEMA); ``doc_ids`` (row number -> id) best given as an Arrow array."""
    count, k = indices.shape
    valid = (indices >= 0).ravel()
    columns = [
        _strings(query_ids).take(pa.array(np.repeat(np.arange(count), k)[valid])),
        _strings(doc_ids).take(pa.array(indices.ravel()[valid])),
        pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), count)[valid]),
        pa.array(scores.ravel()[valid].astype(np.float32)),
    ]
    return pa.Table.from_arrays(columns, schema=RUN_SCHEMA)


def embedding_schema(dim: int, dtype: str) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([("id", pa.string()), ("embedding", pa.list_(value, dim))])


def write_embeddings(path: Path, ids: list[str], embeddings: np.ndarray, dtype: str = "float16") -> None:
    """Embeddings as Parquet: ``id`` and ``embedding`` as a fixed-size list of float16 or float32."""
    with EmbeddingWriter(path, embeddings.shape[1], dtype) as writer:
        writer.write(ids, embeddings)


class EmbeddingWriter:
    """Embedding rows appended in order to one Parquet file, written in row groups of ``GROUP_ROWS`` as they fill, so
    that an encoder's output goes to disk while it encodes (the same bytes as one `write_embeddings` call)."""

    GROUP_ROWS = 65536

    def __init__(self, path: Path, dim: int, dtype: str = "float16"):
        self.dim, self.dtype = dim, np.float16 if dtype == "float16" else np.float32
        self.schema = embedding_schema(dim, dtype)
        # no dictionary: the vectors (and the ids) barely repeat, and decoding one costs 6x the read (1M x 384 on 2 cores)
        self._writer = parquet_io.writer(path, self.schema, compression="none", use_dictionary=False)
        self._ids: list[pa.Array] = []
        self._rows: list[np.ndarray] = []
        self._pending = 0
        self._written = False

    def write(self, ids: list[str] | pa.Array, embeddings: np.ndarray) -> None:
        self._ids.append(ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string()))
        self._rows.append(np.ascontiguousarray(embeddings, dtype=self.dtype))
        self._pending += len(ids)
        if self._pending >= self.GROUP_ROWS:
            self._flush(self._pending - self._pending % self.GROUP_ROWS)

    def _flush(self, count: int) -> None:
        rows = np.concatenate([np.zeros((0, self.dim), self.dtype), *self._rows])
        ids = pa.concat_arrays([pa.array([], pa.string()), *self._ids])
        column = pa.FixedSizeListArray.from_arrays(pa.array(rows[:count].reshape(-1)), self.dim)
        table = pa.Table.from_arrays([ids.slice(0, count), column], schema=self.schema)
        self._writer.write_table(table, row_group_size=self.GROUP_ROWS)
        self._written = True
        self._ids, self._rows, self._pending = [ids.slice(count)], [rows[count:]], self._pending - count

    def close(self) -> None:
        if self._pending or not self._written:
            self._flush(self._pending)
        self._writer.close()

    def __enter__(self) -> "EmbeddingWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:
            self._writer.close()


def embedding_dim(files: list[Path]) -> int:
    dims = {parquet_io.open_file(f).schema_arrow.field("embedding").type.list_size for f in files}
    if len(dims) != 1:
        raise ArtifactError(f"the shards have different dimensions {sorted(dims)}", path=files[0].parent)
    return dims.pop()


def embedding_rows(files: list[Path]) -> int:
    return sum(parquet_io.open_file(f).metadata.num_rows for f in files)


def embedding_ids(files: list[Path]) -> list[str]:
    """The ids of embedding files' rows, in order (the ``id`` column only)."""
    return [i for f in files for i in parquet_io.read_table(f, columns=["id"]).column("id").to_pylist()]


def _matrix(batch: pa.RecordBatch, dtype: type | None) -> np.ndarray:
    """A batch's embeddings as a (rows, dim) array: ``dtype``, or as stored (float16 or float32) for None."""
    flat = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
    flat = flat.reshape(-1, batch.schema.field("embedding").type.list_size)
    return flat if dtype is None else flat.astype(dtype, copy=False)


def iter_embeddings(paths: Iterable[Path], batch_rows: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream (ids, float32 matrix) batches from embedding files, never holding more than one batch."""
    for path in paths:
        for batch in parquet_io.iter_batches(path, batch_size=batch_rows):
            yield batch.column("id").to_pylist(), _matrix(batch, np.float32)


def iter_vectors(paths: Iterable[Path], dtype: type | None, threads: int | None = None) -> Iterator[np.ndarray]:
    """Stream the embeddings alone (no ids read), a row group at a time in order, as ``dtype`` or as stored (None).
    Decoding the list levels is what a read costs, so ``threads`` (default: the available ones, at most 8) decode the
    next row groups meanwhile."""
    groups = []
    for path in paths:
        metadata = parquet_io.open_file(path).metadata
        groups += [(path, g) for g in range(metadata.num_row_groups) if metadata.row_group(g).num_rows]
    workers = max(1, min(threads or available_threads(), 8))
    with ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for path, group in groups:
            pending.append(pool.submit(_row_group_vectors, path, group, dtype))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _row_group_vectors(path: Path, group: int, dtype: type | None) -> np.ndarray:
    table = parquet_io.read_row_groups(parquet_io.open_file(path), path, [group], columns=["embedding"])
    return _matrix(table.combine_chunks().to_batches()[0], dtype)


def read_embeddings(paths: Iterable[Path]) -> tuple[list[str], np.ndarray]:
    ids: list[str] = []
    blocks = []
    for batch_ids, block in iter_embeddings(paths):
        ids += batch_ids
        blocks.append(block)
    return ids, np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)


TOKENS_SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32()))])


def token_rows(ids: list[str] | pa.Array, token_ids: np.ndarray, lengths: np.ndarray) -> pa.Table:
    """Rows of (id, token ids) from the rows' ids (strings, or an Arrow array) one after another and the tokens per
    row."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(token_ids.astype(np.int32, copy=False))
    ids = ids.cast(pa.string()) if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
    return pa.Table.from_arrays([ids, pa.ListArray.from_arrays(offsets, values)], schema=TOKENS_SCHEMA)


def read_tokens(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A whole tokens file as (row ids, the rows' token ids one after another (int32, as stored), where each row
    starts: ``len(ids) + 1`` offsets)."""
    table = parquet_io.read_table(path, columns=["id", "input_ids"])
    column = table.column("input_ids").combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64)
    return table.column("id").to_pylist(), column.values.to_numpy()[offsets[0] : offsets[-1]], offsets - offsets[0]


def token_slice(ids: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) of a tokens file read whole (`read_tokens`): their ids one after another, tokens per row."""
    bounds = offsets[start : stop + 1]
    return ids[bounds[0] : bounds[-1]], np.diff(bounds)


def iter_token_chunks(path: Path, start: int, stop: int, chunk_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Rows [start, stop) of a tokens file as (first row counted from ``start``, the rows' ids one after another
    (int32, as stored), tokens per row), ``chunk_rows`` rows at a time, read a row group at a time."""
    parquet = parquet_io.open_file(path)
    pending: list[pa.Array] = []
    first = 0  # of the pending rows, counted from start
    for table in _row_groups_between(parquet, path, start, stop):
        pending.append(table.column("input_ids").combine_chunks())
        while sum(map(len, pending)) >= chunk_rows:
            column = pa.concat_arrays(pending)
            yield first, *_flat_tokens(column.slice(0, chunk_rows))
            first += chunk_rows
            pending = [column.slice(chunk_rows)]
    if sum(map(len, pending)):
        yield first, *_flat_tokens(pa.concat_arrays(pending))


def _row_groups_between(parquet, path: Path, start: int, stop: int) -> Iterator[pa.Table]:
    """The ``input_ids`` of rows [start, stop), one row group's share at a time."""
    row = 0
    for number in range(parquet.num_row_groups):
        count = parquet.metadata.row_group(number).num_rows
        if row + count > start and row < stop:
            table = parquet_io.read_row_groups(parquet, path, [number], columns=["input_ids"])
            yield table.slice(max(0, start - row), min(stop, row + count) - max(start, row))
        row += count


def _flat_tokens(column: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    offsets = column.offsets.to_numpy()
    return column.values.to_numpy()[offsets[0] : offsets[-1]], np.diff(offsets).astype(np.int64)


def read_negatives(artifact: Path) -> dict[str, list[str]]:
    """query_id -> negative doc ids in rank order, from a `mine_negatives` artifact."""
    path = Path(artifact) / NEGATIVES
    if not path.is_file():
        raise ArtifactError("missing negatives table", path=path, fix="pass a mine_negatives artifact as 'negatives'")
    table = parquet_io.read_table(path)
    return dict(zip(table.column("query_id").to_pylist(), table.column("doc_ids").to_pylist()))
