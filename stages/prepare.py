"""Stage `prepare`: ingest a dataset into normalised Parquet, and carve a seeded dev split.

Inputs (named, as `stages.core.dataset_source.dataset_files` finds them in a dataset folder):
- BEIR: ``corpus`` (corpus.jsonl or .jsonl.gz), ``queries`` (queries.jsonl), ``qrels_<split>`` (qrels/<split>.tsv)
- MS MARCO: ``corpus`` (collection.tsv), ``queries_<split>`` (queries.<split>.tsv), ``qrels_<split>`` (qrels.<split>.tsv)
- ir_datasets and hf (Hugging Face): read by `stages.core.hub_readers` (ids in the params, local folders as inputs).

Output: corpus.parquet (doc_id, title, text), queries.parquet (split, query_id, text),
qrels.parquet (split, query_id, doc_id, relevance), summary.json (counts, dropped judgments); with a dataset that
carries negatives (hf, Tevatron layout), negatives.parquet as `mine_negatives` writes it (``mine.source: given``).
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .core.cli import run_stage
from .core.dataset_records import CHUNK, first_duplicate, judgments_frame, normalise_id, queries_frame, text_field
from .core.errors import ConfigError, DataError
from .core.hub_source import HUB_FORMATS
from .core.artifacts import NEGATIVES
from .core.tables import NEGATIVES_SCHEMA
from .core.tables import write_table
from .core.artifacts import CORPUS, QRELS, QUERIES

VERSION = 2
log = logging.getLogger("stages.prepare")


@dataclass
class PrepareParams:
    format: str = "beir"
    """Dataset layout: 'beir' (jsonl + qrels/<split>.tsv), 'msmarco' (collection.tsv, queries/qrels.<split>.tsv),
    'ir_datasets' or 'hf' (these two take `HubPrepareParams`)."""
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    """Splits to ingest; each needs a qrels file."""
    dev_fraction: float = 0.1
    """Fraction of the judged queries of `dev_source` moved into a new split 'dev' (0 disables)."""
    dev_source: str = "train"
    seed: int = 13
    unknown_ids: str = "error"
    """Judgments naming a query or document that does not exist: 'error' stops, 'drop' removes them with a warning."""
    empty_documents: str = "keep"
    """Documents without title and text: 'keep' (encoded and retrievable; a warning counts them), 'drop' (with a
    counted warning; their judgments go too) or 'error'."""


@dataclass
class HubPrepareParams(PrepareParams):
    """The params of the formats read by id (ir_datasets, hf)."""

    layout: str = "beir"
    """hf only: 'beir' (corpus, queries and qrels configs) or 'tevatron' (query rows with their passages)."""
    datasets: dict[str, dict[str, str]] = field(default_factory=dict)
    """role ('dataset', 'qrels', 'corpus') -> {'id', 'revision'} of each dataset read by id; folders are inputs."""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) for non-blank lines; a UTF-8 BOM is dropped, invalid UTF-8 reported with its line,
    a damaged gzip file with the line it broke at."""
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = _decode(raw, path, number)
                if line.strip():
                    yield number, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(
            f"the gzip file is damaged or truncated after line {number} ({error})",
            path=path,
            fix="copy or download the file again (gzip -t checks it)",
        ) from None


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"invalid UTF-8 at byte {error.start} of the line", path=path, line=number, fix="re-encode the file as UTF-8"
        ) from None
    if number == 1:
        line = line.removeprefix("\ufeff")
    return line.rstrip("\r\n")


JSONL_FIX = 'each line must be one JSON object, e.g. {"_id": "d1", "title": "...", "text": "..."}'


def _jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"malformed JSON: {error.msg} at column {error.colno}", path=path, line=number, fix=JSONL_FIX
            ) from None
        if not isinstance(record, dict):
            raise DataError("expected a JSON object", path=path, line=number, fix=JSONL_FIX)
        for key in required:
            if key not in record:
                raise DataError(f"missing field {key!r}", path=path, line=number, fix=f"every line needs {required}")
        yield number, record


def _tsv(path: Path, allowed: tuple[int, ...], layout: str) -> Iterator[tuple[int, list[str]]]:
    for number, line in _lines(path):
        cells = line.split("\t")
        if len(cells) not in allowed:
            expected = " or ".join(str(n) for n in allowed)
            raise DataError(
                f"expected {expected} tab-separated columns, found {len(cells)}",
                path=path,
                line=number,
                fix=f"lines must be {layout}, separated by tabs (tabs inside a text are not allowed)",
            )
        yield number, cells


def _corpus_records(path: Path, layout: str) -> Iterator[tuple[int, str, str, str]]:
    """(line, doc id, title, text) of every document, read one line at a time."""
    if layout == "beir":
        for number, record in _jsonl(path, ("_id", "text")):
            doc_id = normalise_id(record["_id"], path, number, "document")
            yield number, doc_id, text_field(record.get("title"), path, number, "title"), text_field(record["text"], path, number, "text")
    else:
        for number, cells in _tsv(path, (2, 3), "'pid<TAB>text' or 'pid<TAB>title<TAB>text'"):
            title, text = (cells[1], cells[2]) if len(cells) == 3 else ("", cells[1])
            yield number, normalise_id(cells[0], path, number, "document"), title, text


CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])


def write_corpus(
    records: Iterable[tuple[int, str, str, str]], path: Path | str, out: Path, empty_documents: str
) -> tuple[pa.Array, list[str], dict]:
    """Stream the corpus records (line, doc id, title, text) of ``path`` into ``out`` (Parquet), CHUNK documents at a
    time; return the document ids (an Arrow array, not Python strings), the ids of empty documents and counts. Empty
    documents follow ``empty_documents``: keep, drop or error."""
    id_chunks, line_chunks, empty, dropped = [], [], [], 0
    with pq.ParquetWriter(out, CORPUS_SCHEMA, compression="zstd") as writer:
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


def read_queries_file(path: Path, layout: str) -> pd.DataFrame:
    if layout == "beir":
        rows = ((n, r["_id"], r["text"]) for n, r in _jsonl(path, ("_id", "text")))
    else:
        rows = ((n, c[0], c[1]) for n, c in _tsv(path, (2,), "'qid<TAB>text'"))
    return queries_frame(rows, path)


# Header lines that qrels files carry (BEIR's first); a header is recognised by its content, never by a parse failure.
QRELS_HEADERS = ({"query-id", "corpus-id", "score"}, {"qid", "docid", "rel"}, {"query_id", "doc_id", "relevance"})


def _is_header(cells: list[str]) -> bool:
    names = {cell.strip().lower() for cell in cells} - {"iteration", "q0", "0"}
    return any(names == header for header in QRELS_HEADERS)


def read_qrels_file(path: Path) -> tuple[pd.DataFrame, int]:
    """BEIR (query-id, corpus-id, score; header optional) or TREC (qid, iteration, docid, relevance) judgments."""
    return judgments_frame(_qrels_rows(path), path)


def _qrels_rows(path: Path) -> Iterator[tuple[int, str, str, str]]:
    for number, cells in _tsv(path, (3, 4), "'query-id<TAB>corpus-id<TAB>score' or TREC 'qid<TAB>0<TAB>docid<TAB>rel'"):
        if not (number == 1 and _is_header(cells)):
            yield (number, cells[0], cells[2], cells[3]) if len(cells) == 4 else (number, *cells)


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


class Tables(Protocol):
    """A dataset's records, each with where it comes from (a file, or a dataset id) for errors."""

    def corpus(self) -> tuple[Iterable[tuple[int, str, str, str]], Path | str]:
        """(line, doc id, title, text) records."""

    def queries(self, split: str) -> tuple[pd.DataFrame, Path | str]:
        """`queries_frame` of the split's queries."""

    def qrels(self, split: str) -> tuple[pd.DataFrame, int, Path | str]:
        """`judgments_frame` of the split's judgments."""

    def negatives(self, split: str) -> dict[str, list[str]] | None:
        """Given negatives of the split's queries (None: the dataset has none)."""


class FolderTables:
    """A BEIR or MS MARCO folder's files (`stages.core.dataset_source.dataset_files`)."""

    def __init__(self, layout: str, inputs: Mapping[str, Path]):
        self.layout, self.inputs = layout, inputs
        self.shared = read_queries_file(inputs["queries"], "beir") if layout == "beir" else None

    def corpus(self):
        return _corpus_records(self.inputs["corpus"], self.layout), self.inputs["corpus"]

    def queries(self, split):
        if self.shared is not None:
            return self.shared, self.inputs["queries"]
        path = self.inputs[f"queries_{split}"]
        return read_queries_file(path, "msmarco"), path

    def qrels(self, split):
        path = self.inputs[f"qrels_{split}"]
        return (*read_qrels_file(path), path)

    def negatives(self, split):
        return None


def open_tables(params: PrepareParams, inputs: Mapping[str, Path]) -> Tables:
    if params.format in ("beir", "msmarco"):
        return FolderTables(params.format, inputs)
    if not isinstance(params, HubPrepareParams):
        raise ConfigError(f"format {params.format!r} takes HubPrepareParams (the ids of its datasets)")
    from .core.hub_readers import hub_tables

    return hub_tables(params, inputs)


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
    pq.write_table(table, out_dir / NEGATIVES, compression="zstd")
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
        table.loc[moved, "split"] = "dev"
    log.info("dev split: %d queries carved from %s (seed %d)", len(chosen), source, seed)
    return queries, qrels


def params_class(argv: list[str] | None) -> type:
    """PrepareParams; `HubPrepareParams` (more fields: the ids) for the formats read by id."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="{}")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        values = json.loads(known.params)
    except ValueError:
        values = {}  # run_stage reports it
    return HubPrepareParams if isinstance(values, dict) and values.get("format") in HUB_FORMATS else PrepareParams


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", params_class(argv), prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
