"""Parquet I/O shared by all stages: the prepared dataset, runs (ranked lists) and embedding shards."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.errors import ArtifactError, DataError

CORPUS, QUERIES, QRELS = "corpus.parquet", "queries.parquet", "qrels.parquet"
RUN_PARQUET, RUN_TREC = "run.parquet", "run.trec"
RUN_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("rank", pa.int32()), ("score", pa.float32())])


def write_table(frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    if not Path(path).is_file():
        raise ArtifactError("missing table", path=path, fix="rerun the stage that writes it")
    return pq.read_table(path, columns=columns).to_pandas()


def read_corpus(prepared: Path) -> pd.DataFrame:
    return _read(Path(prepared) / CORPUS)


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


def qrels_dict(qrels: pd.DataFrame) -> dict[str, dict[str, int]]:
    judged: dict[str, dict[str, int]] = {}
    for query_id, doc_id, relevance in qrels[["query_id", "doc_id", "relevance"]].itertuples(index=False):
        judged.setdefault(query_id, {})[doc_id] = int(relevance)
    return judged


def write_run(run: pd.DataFrame, out_dir: Path, tag: str) -> None:
    """A run as Parquet (query_id, doc_id, rank, score) and as a TREC run file whose scores strictly decrease with
    rank (trec_eval and pytrec_eval ignore the rank column and break score ties by doc id)."""
    run = run.sort_values(["query_id", "rank"], kind="stable")
    write_table(run, Path(out_dir) / RUN_PARQUET, RUN_SCHEMA)
    scores = strictly_decreasing(run["query_id"].to_numpy(), run["score"].to_numpy())
    with open(Path(out_dir) / RUN_TREC, "w") as trec:
        for query_id, doc_id, rank, score in zip(run["query_id"], run["doc_id"], run["rank"], scores):
            trec.write(f"{query_id} Q0 {doc_id} {rank} {score} {tag}\n")


def strictly_decreasing(query_ids: np.ndarray, scores: np.ndarray) -> list[str]:
    """Scores rounded to 1e-6 and, where ties (or a rank order against the scores) would remain, lowered by 1e-6
    steps so that each query's scores strictly decrease in rank order; as fixed-point text."""
    micro = np.round(np.asarray(scores, dtype=np.float64) * 1e6).astype(np.int64)
    position = pd.Series(query_ids).groupby(query_ids, sort=False).cumcount().to_numpy()
    # s'[r] = min over j <= r of (s[j] + j) - r, within each query: the largest sequence below s that drops by >= 1
    lowered = pd.Series(micro + position).groupby(query_ids, sort=False).cummin().to_numpy() - position
    return [f"{'-' if value < 0 else ''}{abs(value) // 1_000_000}.{abs(value) % 1_000_000:06d}" for value in lowered]


def read_run(artifact: Path) -> pd.DataFrame:
    return _read(Path(artifact) / RUN_PARQUET)


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


def embedding_schema(dim: int, dtype: str) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([("id", pa.string()), ("embedding", pa.list_(value, dim))])


def write_embeddings(path: Path, ids: list[str], embeddings: np.ndarray, dtype: str = "float16") -> None:
    """Embeddings as Parquet: ``id`` and ``embedding`` as a fixed-size list of float16 or float32."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float16 if dtype == "float16" else np.float32)
    rows, dim = embeddings.shape
    values = pa.array(embeddings.reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(values, dim)
    table = pa.Table.from_arrays([pa.array(ids, pa.string()), column], schema=embedding_schema(dim, dtype))
    pq.write_table(table, path, compression="none", row_group_size=65536)


def iter_embeddings(paths: Iterable[Path], batch_rows: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream (ids, float32 matrix) batches from embedding files, never holding more than one batch."""
    for path in paths:
        parquet = pq.ParquetFile(path)
        dim = parquet.schema_arrow.field("embedding").type.list_size
        for batch in parquet.iter_batches(batch_size=batch_rows):
            flat = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
            yield batch.column("id").to_pylist(), flat.reshape(-1, dim).astype(np.float32, copy=False)


def read_embeddings(paths: Iterable[Path]) -> tuple[list[str], np.ndarray]:
    ids: list[str] = []
    blocks = []
    for batch_ids, block in iter_embeddings(paths):
        ids += batch_ids
        blocks.append(block)
    return ids, np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)


TOKENS_SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32()))])


def token_rows(ids: list[str], token_ids: np.ndarray, lengths: np.ndarray) -> pa.Table:
    """Rows of (id, token ids) from the rows' ids one after another and the tokens per row."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = pa.array(token_ids.astype(np.int32))
    return pa.Table.from_arrays([pa.array(ids, pa.string()), pa.ListArray.from_arrays(offsets, values)], schema=TOKENS_SCHEMA)


def iter_token_chunks(path: Path, start: int, stop: int, chunk_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Rows [start, stop) of a tokens file as (first row counted from ``start``, the rows' ids one after another
    (int32, as stored), tokens per row), ``chunk_rows`` rows at a time."""
    parquet = pq.ParquetFile(path)
    groups, first_row, row = [], None, 0  # read only the row groups that hold [start, stop)
    for number in range(parquet.num_row_groups):
        count = parquet.metadata.row_group(number).num_rows
        if row + count > start and row < stop:
            groups.append(number)
            first_row = row if first_row is None else first_row
        row += count
    if not groups:
        return
    table = parquet.read_row_groups(groups, columns=["input_ids"]).slice(start - first_row, stop - start)
    for first in range(0, len(table), chunk_rows):
        column = table.column("input_ids").slice(first, chunk_rows).combine_chunks()
        offsets = column.offsets.to_numpy()
        lengths = np.diff(offsets).astype(np.int64)
        yield first, column.values.to_numpy()[offsets[0] : offsets[-1]], lengths
