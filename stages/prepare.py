"""Stage `prepare`: ingest a BEIR or MS MARCO TSV dataset into normalised Parquet, and carve a seeded dev split.

Inputs (named):
- BEIR: ``corpus`` (corpus.jsonl or .jsonl.gz), ``queries`` (queries.jsonl), ``qrels_<split>`` (qrels/<split>.tsv)
- MS MARCO: ``corpus`` (collection.tsv), ``queries_<split>`` (queries.<split>.tsv), ``qrels_<split>`` (qrels.<split>.tsv)

Output: corpus.parquet (doc_id, title, text), queries.parquet (split, query_id, text),
qrels.parquet (split, query_id, doc_id, relevance), summary.json (counts, dropped judgments).
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from stages.cli import run_stage
from stages.errors import DataError
from stages.tables import CORPUS, QRELS, QUERIES, write_table

VERSION = 1
log = logging.getLogger("stages.prepare")


@dataclass
class PrepareParams:
    format: str = "beir"
    """Dataset layout: 'beir' (jsonl + qrels/<split>.tsv) or 'msmarco' (collection.tsv, queries/qrels.<split>.tsv)."""
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    """Splits to ingest; each needs a qrels file."""
    dev_fraction: float = 0.1
    """Fraction of the judged queries of `dev_source` moved into a new split 'dev' (0 disables)."""
    dev_source: str = "train"
    seed: int = 13
    unknown_ids: str = "error"
    """Judgments naming a query or document that does not exist: 'error' stops, 'drop' removes them with a warning."""


def dataset_files(root: Path, params_format: str, splits: list[str]) -> dict[str, Path]:
    """The named input files of a dataset folder; raises DataError naming the first missing one."""
    root = Path(root)
    if params_format == "beir":
        corpus = root / "corpus.jsonl"
        if not corpus.exists() and (root / "corpus.jsonl.gz").exists():
            corpus = root / "corpus.jsonl.gz"
        files = {"corpus": corpus, "queries": root / "queries.jsonl"}
        files |= {f"qrels_{split}": root / "qrels" / f"{split}.tsv" for split in splits}
    elif params_format == "msmarco":
        files = {"corpus": root / "collection.tsv"}
        files |= {f"queries_{split}": root / f"queries.{split}.tsv" for split in splits}
        files |= {f"qrels_{split}": root / f"qrels.{split}.tsv" for split in splits}
    else:
        raise DataError(f"unknown dataset format {params_format!r}", fix="use 'beir' or 'msmarco'")
    for name, path in files.items():
        if not path.is_file():
            raise DataError(
                f"dataset file for {name!r} not found",
                path=path,
                fix=f"check dataset.path and dataset.format ({params_format}) in the config",
            )
    return files


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) for non-blank lines; invalid UTF-8 is reported with its line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"invalid UTF-8 at byte {error.start} of the line",
                    path=path,
                    line=number,
                    fix="re-encode the file as UTF-8",
                ) from None
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"malformed JSON: {error.msg} at column {error.colno}", path=path, line=number) from None
        if not isinstance(record, dict):
            raise DataError("expected a JSON object", path=path, line=number)
        for key in required:
            if key not in record:
                raise DataError(f"missing field {key!r}", path=path, line=number, fix=f"every line needs {required}")
        yield number, record


def _tsv(path: Path, columns: int) -> Iterator[tuple[int, list[str]]]:
    for number, line in _lines(path):
        cells = line.split("\t")
        if len(cells) < columns:
            raise DataError(
                f"expected {columns} tab-separated columns, found {len(cells)}", path=path, line=number
            )
        yield number, cells


def _unique(rows: list[tuple], path: Path, what: str) -> None:
    first_seen: dict[str, int] = {}
    for number, identifier, *_ in rows:
        if identifier in first_seen:
            raise DataError(
                f"duplicate {what} id {identifier!r} (first on line {first_seen[identifier]})",
                path=path,
                line=number,
                fix="ids must be unique; remove or rename the duplicate",
            )
        first_seen[identifier] = number


def _nonempty(rows: list[tuple], path: Path, what: str) -> None:
    for number, identifier, *texts in rows:
        if not any(text.strip() for text in texts):
            raise DataError(f"{what} {identifier!r} has empty text", path=path, line=number)


def read_corpus_file(path: Path, layout: str) -> pd.DataFrame:
    if layout == "beir":
        rows = [
            (n, str(r["_id"]), str(r.get("title") or ""), str(r["text"] or "")) for n, r in _jsonl(path, ("_id", "text"))
        ]
    else:
        rows = [(n, cells[0], "", cells[1]) for n, cells in _tsv(path, 2)]
    _unique(rows, path, "document")
    _nonempty(rows, path, "document")
    return pd.DataFrame([r[1:] for r in rows], columns=["doc_id", "title", "text"])


def read_queries_file(path: Path, layout: str) -> pd.DataFrame:
    if layout == "beir":
        rows = [(n, str(r["_id"]), str(r["text"] or "")) for n, r in _jsonl(path, ("_id", "text"))]
    else:
        rows = [(n, cells[0], cells[1]) for n, cells in _tsv(path, 2)]
    _unique(rows, path, "query")
    _nonempty(rows, path, "query")
    return pd.DataFrame([r[1:] for r in rows], columns=["query_id", "text"]).assign(line=[r[0] for r in rows])


def read_qrels_file(path: Path) -> pd.DataFrame:
    """BEIR (query-id, corpus-id, score with a header) or TREC (qid, 0, docid, relevance) judgments."""
    rows = []
    for number, cells in _tsv(path, 3):
        if number == 1 and not cells[-1].strip().lstrip("-").isdigit():
            continue  # header
        query_id, doc_id, relevance = (cells[0], cells[2], cells[3]) if len(cells) >= 4 else cells[:3]
        try:
            rows.append((query_id.strip(), doc_id.strip(), int(relevance), number))
        except ValueError:
            raise DataError(f"relevance {relevance!r} is not an integer", path=path, line=number) from None
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "relevance", "line"])


def _check_known(qrels: pd.DataFrame, column: str, known: pd.Index, path: Path, policy: str) -> tuple[pd.DataFrame, int]:
    unknown = ~qrels[column].isin(known)
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


def prepare(params: PrepareParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    """Read, validate and normalise the dataset; write the three Parquet tables into ``out_dir``."""
    if params.unknown_ids not in {"error", "drop"}:
        raise DataError(f"unknown_ids must be 'error' or 'drop', not {params.unknown_ids!r}")
    corpus = read_corpus_file(inputs["corpus"], params.format)
    log.info("corpus: %d documents", len(corpus))
    doc_index = pd.Index(corpus["doc_id"])

    query_tables, qrel_tables, dropped = [], [], {}
    shared_queries = read_queries_file(inputs["queries"], "beir") if params.format == "beir" else None
    for split in params.splits:
        qrels_path = inputs[f"qrels_{split}"]
        if params.format == "beir":
            queries, queries_path = shared_queries, inputs["queries"]
        else:
            queries_path = inputs[f"queries_{split}"]
            queries = read_queries_file(queries_path, "msmarco")
        qrels = read_qrels_file(qrels_path)
        qrels, unknown_queries = _check_known(qrels, "query_id", pd.Index(queries["query_id"]), qrels_path, params.unknown_ids)
        qrels, unknown_docs = _check_known(qrels, "doc_id", doc_index, qrels_path, params.unknown_ids)
        dropped[split] = {"unknown_query_ids": unknown_queries, "unknown_doc_ids": unknown_docs}
        qrels = qrels.drop_duplicates(["query_id", "doc_id"], keep="last")
        judged = qrels.loc[qrels["relevance"] > 0, "query_id"].unique()
        if len(judged) == 0:
            raise DataError(
                f"split {split!r} has no query with a positive judgment",
                path=qrels_path,
                fix="check the qrels file, or remove the split from dataset.splits",
            )
        split_queries = queries[queries["query_id"].isin(judged)][["query_id", "text"]].assign(split=split)
        query_tables.append(split_queries)
        qrel_tables.append(qrels[qrels["query_id"].isin(judged)][["query_id", "doc_id", "relevance"]].assign(split=split))
        log.info("split %s: %d judged queries, %d judgments", split, len(split_queries), len(qrel_tables[-1]))

    queries = pd.concat(query_tables, ignore_index=True)
    qrels = pd.concat(qrel_tables, ignore_index=True)
    if params.dev_fraction > 0:
        queries, qrels = carve_dev(queries, qrels, params.dev_source, params.dev_fraction, params.seed)

    write_table(corpus, out_dir / CORPUS)
    write_table(queries[["split", "query_id", "text"]], out_dir / QUERIES)
    write_table(qrels[["split", "query_id", "doc_id", "relevance"]].astype({"relevance": "int32"}), out_dir / QRELS)
    counts = {split: int((queries["split"] == split).sum()) for split in queries["split"].unique()}
    return {"documents": len(corpus), "queries": counts, "judgments": int(len(qrels)), "dropped": dropped}


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


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", PrepareParams, prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
