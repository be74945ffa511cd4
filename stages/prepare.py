"""Stage `prepare`: ingest a dataset into normalised Parquet, and carve a seeded dev split.

Inputs and reader: those of the dataset's format (`stages.core.dataset_formats.FORMATS`): a folder's named files
(beir, msmarco: `stages.core.folder_readers`), or datasets read by id, their ids in the params and local folders as
inputs (ir_datasets, hf: `stages.core.hub_readers`). Here: the checks every format shares, the dev split, the writing.

Output: corpus.parquet (doc_id, title, text), queries.parquet (split, query_id, text),
qrels.parquet (split, query_id, doc_id, relevance), summary.json (counts, dropped judgments); with a dataset that
carries negatives (hf, Tevatron layout), negatives.parquet as `mine_negatives` writes it (``mine.source: given``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .core import parquet_io
from .core.cli import run_stage
from .core.dataset_formats import FORMATS, DatasetFormat, Tables, dataset_format
from .core.dataset_records import CHUNK, first_duplicate
from .core.errors import ConfigError, DataError
from .core.artifacts import CORPUS, DEV_SPLIT, NEGATIVES, QRELS, QUERIES
from .core.tables import NEGATIVES_SCHEMA, write_table

VERSION = 2
log = logging.getLogger("stages.prepare")


@dataclass
class PrepareParams:
    """No defaults: the config schema's ``dataset`` section states them."""

    format: str
    """Dataset format, a key of `stages.core.dataset_formats.FORMATS`: 'beir' or 'msmarco' (a folder's files), or
    'ir_datasets' or 'hf' (read by id: these take `HubPrepareParams`)."""
    splits: list[str]
    """Splits to ingest; each needs a qrels file."""
    dev_fraction: float
    """Fraction of the judged queries of `dev_source` moved into a new split 'dev' (0 disables)."""
    dev_source: str
    seed: int
    unknown_ids: str
    """Judgments naming a query or document that does not exist: 'error' stops, 'drop' removes them with a warning."""
    empty_documents: str
    """Documents without title and text: 'keep' (encoded and retrievable; a warning counts them), 'drop' (with a
    counted warning; their judgments go too) or 'error'."""


@dataclass
class HubPrepareParams(PrepareParams):
    """The params of the formats read by id (ir_datasets, hf)."""

    layout: str
    """hf only, a key of `stages.core.dataset_formats.HF_LAYOUTS`: 'beir' (corpus, queries and qrels configs) or
    'tevatron' (query rows with their passages)."""
    datasets: dict[str, dict[str, str]]
    """role ('dataset', 'qrels', 'corpus') -> {'id', 'revision'} of each dataset read by id; folders are inputs."""


CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])


def write_corpus(
    records: Iterable[tuple[int, str, str, str]], path: Path | str, out: Path, empty_documents: str
) -> tuple[pa.Array, list[str], dict]:
    """Stream the corpus records (line, doc id, title, text) of ``path`` into ``out`` (Parquet), CHUNK documents at a
    time; return the document ids (an Arrow array, not Python strings), the ids of empty documents and counts. Empty
    documents follow ``empty_documents``: keep, drop or error."""
    id_chunks, line_chunks, empty, dropped = [], [], [], 0
    with parquet_io.writer(out, CORPUS_SCHEMA) as writer:
        for batch in _batched(iter(records), CHUNK):
            keep = []
            for number, doc_id, title, text in batch:
                if title.strip() or text.strip():
                    keep.append((number, doc_id, title, text))
                    continue
                if empty_documents == "error":
                    raise DataError(
                        f"document {doc_id!r} has empty text",
                        path=path,
                        line=number,
                        fix="give it a text, or set dataset.empty_documents: keep (or drop)",
                    )
                empty.append(doc_id)
                if empty_documents == "keep":
                    keep.append((number, doc_id, title, text))
                else:
                    dropped += 1
            columns = list(zip(*keep)) if keep else [(), (), (), ()]
            ids = pa.array(columns[1], pa.string())
            writer.write_table(pa.Table.from_arrays([ids, pa.array(columns[2], pa.string()), pa.array(columns[3], pa.string())], schema=CORPUS_SCHEMA))
            id_chunks.append(ids)
            line_chunks.append(np.asarray(columns[0], dtype=np.int64))
    ids = pa.concat_arrays(id_chunks) if id_chunks else pa.array([], pa.string())
    if len(ids) == 0 and not empty:
        raise DataError("empty corpus: the file holds no documents", path=path, fix="check dataset.path and the file")
    if len(ids) == 0:
        raise DataError(
            f"empty corpus: all {len(empty)} documents have empty text and were dropped",
            path=path,
            fix="set dataset.empty_documents: keep, or give the documents a text",
        )
    first_duplicate(ids, np.concatenate(line_chunks), path, "document")
    if empty:
        verb = "kept (they are encoded and can be retrieved)" if empty_documents == "keep" else "dropped"
        log.warning("%s: %d documents with empty text %s, e.g. %r", path, len(empty), verb, empty[0])
    counts = {"documents": len(ids), "empty_documents": len(empty), "empty_documents_dropped": dropped}
    return ids, empty, counts | {"empty_document_ids": empty[:20]}


def _batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_known(qrels: pd.DataFrame, column: str, known, path: Path, policy: str) -> tuple[pd.DataFrame, int]:
    """Judgments whose ``column`` id is not in ``known`` (an Arrow array or pandas Index): an error, or dropped."""
    ids = pa.array(qrels[column], pa.string())
    unknown = ~np.asarray(pc.is_in(ids, value_set=pa.array(known, pa.string())).to_numpy(zero_copy_only=False), bool)
    if not unknown.any():
        return qrels, 0
    first = qrels[unknown].iloc[0]
    what = "query" if column == "query_id" else "document"
    if policy == "error":
        raise DataError(
            f"judgment names unknown {what} id {first[column]!r} ({int(unknown.sum())} such judgments in the file)",
            path=path,
            line=int(first["line"]),
            fix="fix the ids, or set dataset.unknown_ids: drop to drop these judgments with a warning",
        )
    log.warning("%s: dropped %d judgments naming unknown %s ids", path, int(unknown.sum()), what)
    return qrels[~unknown], int(unknown.sum())


def _empty_queries(queries: pd.DataFrame, judged, path: Path) -> None:
    """Empty queries are an error (nothing can be retrieved for them) when they are judged."""
    empty = queries[queries["query_id"].isin(judged) & ~queries["text"].str.strip().astype(bool)]
    if len(empty):
        raise DataError(
            f"query {empty['query_id'].iloc[0]!r} has empty text",
            path=path,
            line=int(empty["line"].iloc[0]),
            fix="give the query a text, or remove it and its judgments",
        )


def open_tables(params: PrepareParams, inputs: Mapping[str, Path]) -> Tables:
    """The format's reader (`stages.core.dataset_formats`) over the inputs."""
    found = dataset_format(params.format)
    expected = params_for(found)
    if not isinstance(params, expected):
        raise ConfigError(f"dataset format {params.format!r} takes {expected.__name__}, not {type(params).__name__}")
    return found.tables(params, inputs)


def params_for(found: DatasetFormat) -> type[PrepareParams]:
    return HubPrepareParams if found.by_id else PrepareParams


def prepare(params: PrepareParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    """Read, validate and normalise the dataset; write the three Parquet tables into ``out_dir``."""
    if params.unknown_ids not in {"error", "drop"}:
        raise DataError(f"unknown_ids must be 'error' or 'drop', not {params.unknown_ids!r}", fix="set dataset.unknown_ids")
    if params.empty_documents not in {"keep", "drop", "error"}:
        raise DataError(
            f"empty_documents must be 'keep', 'drop' or 'error', not {params.empty_documents!r}",
            fix="set dataset.empty_documents",
        )
    tables = open_tables(params, inputs)
    doc_ids, empty, corpus_counts = write_corpus(*tables.corpus(), out_dir / CORPUS, params.empty_documents)
    log.info("corpus: %d documents", len(doc_ids))
    dropped_empty = pd.Index(empty if params.empty_documents == "drop" else [])

    query_tables, qrel_tables, dropped = [], [], {}
    for split in params.splits:
        queries, queries_path = tables.queries(split)
        qrels, repeated, qrels_path = tables.qrels(split)
        qrels, unknown_queries = _check_known(qrels, "query_id", queries["query_id"], qrels_path, params.unknown_ids)
        qrels, of_empty = _drop_judgments_of(qrels, dropped_empty, qrels_path)
        qrels, unknown_docs = _check_known(qrels, "doc_id", doc_ids, qrels_path, params.unknown_ids)
        dropped[split] = {
            "unknown_query_ids": unknown_queries,
            "unknown_doc_ids": unknown_docs,
            "judgments_of_dropped_empty_documents": of_empty,
            "repeated_identical_judgments": repeated,
        }
        judged = qrels.loc[qrels["relevance"] > 0, "query_id"].unique()
        if len(judged) == 0:
            raise DataError(
                f"split {split!r} has no query with a positive judgment",
                path=qrels_path,
                fix="check the qrels file, or remove the split from dataset.splits",
            )
        _empty_queries(queries, judged, queries_path)
        split_queries = queries[queries["query_id"].isin(judged)][["query_id", "text"]].assign(split=split)
        query_tables.append(split_queries)
        qrel_tables.append(qrels[qrels["query_id"].isin(judged)][["query_id", "doc_id", "relevance"]].assign(split=split))
        log.info("split %s: %d judged queries, %d judgments", split, len(split_queries), len(qrel_tables[-1]))

    queries = pd.concat(query_tables, ignore_index=True)
    qrels = pd.concat(qrel_tables, ignore_index=True)
    if params.dev_fraction > 0:
        queries, qrels = carve_dev(queries, qrels, params.dev_source, params.dev_fraction, params.seed)

    given = tables.negatives(params.dev_source)
    if given is not None:
        write_given_negatives(given, qrels, Path(out_dir))
    write_table(queries[["split", "query_id", "text"]], out_dir / QUERIES)
    write_table(qrels[["split", "query_id", "doc_id", "relevance"]].astype({"relevance": "int32"}), out_dir / QRELS)
    counts = {split: int((queries["split"] == split).sum()) for split in queries["split"].unique()}
    return {
        **corpus_counts,
        "queries": counts,
        "judgments": int(len(qrels)),
        "dropped": dropped,
        "items": {"documents": len(doc_ids)},
    }


def write_given_negatives(given: Mapping[str, list[str]], qrels: pd.DataFrame, out_dir: Path) -> None:
    """The dataset's own negatives of the judged train queries, minus their positives, as `mine_negatives` writes
    them (one row per judged query, possibly empty)."""
    train = qrels[qrels["split"] == "train"]
    positives = train[train["relevance"] > 0].groupby("query_id")["doc_id"].agg(set).to_dict()
    judged = sorted(train["query_id"].unique())
    lists = [[d for d in given.get(q, []) if d not in positives.get(q, set())] for q in judged]
    columns = [pa.array(judged, pa.string()), pa.array(lists, pa.list_(pa.string()))]
    table = pa.Table.from_arrays(columns, schema=NEGATIVES_SCHEMA)
    parquet_io.write_table(table, out_dir / NEGATIVES)
    log.info("given negatives: %d train queries, %d negatives", len(judged), sum(map(len, lists)))


def _drop_judgments_of(qrels: pd.DataFrame, dropped: pd.Index, path: Path) -> tuple[pd.DataFrame, int]:
    """With empty_documents: drop, the judgments of the dropped documents go too (counted, with a warning)."""
    gone = qrels["doc_id"].isin(dropped).to_numpy()
    if gone.any():
        log.warning("%s: dropped %d judgments of documents dropped for empty text", path, int(gone.sum()))
    return qrels[~gone], int(gone.sum())


def carve_dev(queries: pd.DataFrame, qrels: pd.DataFrame, source: str, fraction: float, seed: int):
    """Move a seeded ``fraction`` of the ``source`` split's queries (with their judgments) into split 'dev'."""
    if not 0 < fraction < 1:
        raise DataError(f"dev_fraction must be in (0, 1), not {fraction}")
    pool = np.sort(queries.loc[queries["split"] == source, "query_id"].to_numpy())
    if len(pool) < 2:
        raise DataError(f"split {source!r} has too few queries to carve a dev split from", fix="set dev_fraction: 0")
    chosen = set(np.random.default_rng(seed).choice(pool, size=max(1, round(len(pool) * fraction)), replace=False))
    for table in (queries, qrels):
        moved = (table["split"] == source) & table["query_id"].isin(chosen)
        table.loc[moved, "split"] = DEV_SPLIT
    log.info("dev split: %d queries carved from %s (seed %d)", len(chosen), source, seed)
    return queries, qrels


def params_class(argv: list[str] | None) -> type:
    """The params class of the format in ``--params``: `HubPrepareParams` (more fields: the ids) for one read by id."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="{}")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        values = json.loads(known.params)
    except ValueError:
        values = {}  # run_stage reports it
    name = values.get("format") if isinstance(values, dict) else None
    found = FORMATS.get(name) if isinstance(name, str) else None
    return params_for(found) if found else PrepareParams  # an unknown format: prepare reports it


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", params_class(argv), prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
