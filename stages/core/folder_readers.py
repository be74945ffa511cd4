"""The `prepare` tables of a dataset folder (`stages.core.dataset_formats` names its files): BEIR's (corpus.jsonl or
.jsonl.gz, queries.jsonl, qrels/<split>.tsv) and MS MARCO's (collection.tsv, queries.<split>.tsv, qrels.<split>.tsv).
Files are read a line at a time; every error names the file and line."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator, Mapping

import pandas as pd

from .dataset_records import judgments_frame, normalise_id, queries_frame, text_field
from .errors import DataError


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


JUDGMENTS_FIX = (
    "lines must be TREC 'qid 0 docid relevance' or BEIR 'query-id corpus-id score' (a header line may come first)"
)


def read_judgments_file(path: Path) -> pd.DataFrame:
    """TREC (qid, iteration, docid, relevance) or BEIR (query-id, corpus-id, score; header optional) judgments whose
    columns any whitespace separates, as TREC tools read them: (query_id, doc_id, relevance, line)."""
    return judgments_frame(_judgment_rows(path), path)[0]


def _judgment_rows(path: Path) -> Iterator[tuple[int, str, str, str]]:
    for count, (number, line) in enumerate(_lines(path)):
        cells = line.split()
        if count == 0 and _is_header(cells):
            continue
        if len(cells) not in (3, 4):
            message = f"expected 3 or 4 columns, found {len(cells)} columns"
            raise DataError(message, path=path, line=number, fix=JUDGMENTS_FIX)
        yield (number, cells[0], cells[2], cells[3]) if len(cells) == 4 else (number, *cells)


class FolderTables:
    """The files of a folder by input name; judgments of split s in input ``qrels_<s>``; no negatives."""

    def __init__(self, inputs: Mapping[str, Path]):
        self.inputs = inputs

    def qrels(self, split):
        path = self.inputs[f"qrels_{split}"]
        return (*read_qrels_file(path), path)

    def negatives(self, split):
        return None


class BeirFolderTables(FolderTables):
    """BEIR: ``corpus`` (jsonl: _id, title, text), ``queries`` (jsonl: _id, text; one file for every split)."""

    def __init__(self, inputs: Mapping[str, Path]):
        super().__init__(inputs)
        path = self.inputs["queries"]
        self.shared = queries_frame(((n, r["_id"], r["text"]) for n, r in _jsonl(path, ("_id", "text"))), path)

    def corpus(self):
        path = self.inputs["corpus"]

        def records():
            for number, record in _jsonl(path, ("_id", "text")):
                doc_id = normalise_id(record["_id"], path, number, "document")
                title = text_field(record.get("title"), path, number, "title")
                yield number, doc_id, title, text_field(record["text"], path, number, "text")

        return records(), path

    def queries(self, split):
        return self.shared, self.inputs["queries"]


class MsmarcoFolderTables(FolderTables):
    """MS MARCO: ``corpus`` (pid, text or pid, title, text), ``queries_<split>`` (qid, text); all tab-separated."""

    def corpus(self):
        path = self.inputs["corpus"]

        def records():
            for number, cells in _tsv(path, (2, 3), "'pid<TAB>text' or 'pid<TAB>title<TAB>text'"):
                title, text = (cells[1], cells[2]) if len(cells) == 3 else ("", cells[1])
                yield number, normalise_id(cells[0], path, number, "document"), title, text

        return records(), path

    def queries(self, split):
        path = self.inputs[f"queries_{split}"]
        return queries_frame(((n, c[0], c[1]) for n, c in _tsv(path, (2,), "'qid<TAB>text'")), path), path
