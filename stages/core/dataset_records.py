"""Dataset records as every reader gives them to `prepare`: ids and texts checked one rule for all formats, queries
and judgments as frames; each error names the file (or dataset) and line (or row)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError

CHUNK = 100_000  # documents read and written at a time
log = logging.getLogger("stages.prepare")


def normalise_id(value, path: Path, line: int, what: str) -> str:
    """One id rule for every file: a string or integer, surrounding whitespace stripped, no whitespace inside
    (a TREC run or qrels line could not hold it)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(
            f"{what} id {value!r} is not a string or an integer", path=path, line=line, fix="give every id as a string"
        )
    text = str(value).strip()
    if not text:
        raise DataError(f"empty {what} id", path=path, line=line, fix="give every record a non-empty id")
    if any(character.isspace() for character in text):
        raise DataError(
            f"{what} id {text!r} contains whitespace, which no TREC run or qrels file can hold",
            path=path,
            line=line,
            fix="replace the whitespace in the id (e.g. with '_') in every file that names it",
        )
    return text


def text_field(value, path: Path, line: int, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"field {field!r} is {type(value).__name__}, not a string",
            path=path,
            line=line,
            fix="write it as a JSON string",
        )
    return value


def first_duplicate(ids: pa.Array, lines: np.ndarray, path: Path, what: str) -> None:
    """Raise naming the first repeated id and both of its lines (nothing is built when all ids are unique)."""
    if len(pc.unique(ids)) == len(ids):
        return
    series = pd.Series(ids.to_numpy(zero_copy_only=False))
    repeated = int(np.flatnonzero(series.duplicated().to_numpy())[0])
    first = int(np.flatnonzero((series == series.iloc[repeated]).to_numpy())[0])
    raise DataError(
        f"duplicate {what} id {series.iloc[repeated]!r} (first on line {lines[first]})",
        path=path,
        line=int(lines[repeated]),
        fix="ids must be unique; remove or rename the duplicate",
    )


def queries_frame(rows: Iterable[tuple[int, object, object]], path: Path | str) -> pd.DataFrame:
    """(line, query id, text) rows, checked, as a frame; a repeated id is an error naming both lines."""
    rows = [(n, normalise_id(q, path, n, "query"), text_field(text, path, n, "text")) for n, q, text in rows]
    frame = pd.DataFrame(rows, columns=["line", "query_id", "text"])
    first_duplicate(pa.array(frame["query_id"], pa.string()), frame["line"].to_numpy(), path, "query")
    return frame


def relevance_value(value: str, path: Path, line: int) -> int:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not np.isfinite(number) or number != int(number):
        raise DataError(
            f"relevance {value!r} is not an integer",
            path=path,
            line=line,
            fix="judgments are integers (0 = not relevant); a header line must read 'query-id<TAB>corpus-id<TAB>score'",
        )
    return int(number)


def judgments_frame(rows: Iterable[tuple[int, object, object, object]], path: Path | str) -> tuple[pd.DataFrame, int]:
    """(line, query id, doc id, relevance) rows as a frame, and the number of identical repeated judgments (dropped).
    Conflicting repeats are an error naming both lines."""
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    repeated = 0
    for number, query_id, doc_id, relevance in rows:
        pair = (normalise_id(query_id, path, number, "query"), normalise_id(doc_id, path, number, "document"))
        value = relevance_value(str(relevance), path, number)
        if pair in seen:
            first_line, first_value = seen[pair]
            if first_value != value:
                raise DataError(
                    f"query {pair[0]!r} and document {pair[1]!r} are judged {first_value} on line {first_line} "
                    f"and {value} on line {number}",
                    path=path,
                    line=number,
                    fix="keep one judgment per query and document",
                )
            repeated += 1
            continue
        seen[pair] = (number, value)
    rows = [(q, d, value, line) for (q, d), (line, value) in seen.items()]
    if repeated:
        log.warning("%s: %d judgments repeated identically; each counted once", path, repeated)
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "relevance", "line"]), repeated
