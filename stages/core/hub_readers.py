"""The `prepare` tables of datasets read by id (`stages.core.hub_source` locates them, `stages.core.dataset_formats`
picks the reader): ir_datasets, and Hugging Face datasets in BEIR's layout (corpus and queries configs, qrels in a
config or a dataset of their own, as BeIR/scifact and BeIR/scifact-qrels) or Tevatron's (rows of query_id, query,
positive_passages, negative_passages).

A Hugging Face folder is read offline by the datasets library: a `save_to_disk` folder (one per config, or the
dataset's only config) with `load_from_disk`, any other folder (the Hub's layout: parquet, jsonl or tsv files and a
README's configs) with `load_dataset(folder, streaming=True)`, which copies nothing into the datasets cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from .dataset_records import CHUNK, judgments_frame, normalise_id, queries_frame, text_field
from .errors import DataError
from .hub_source import cached_hf_dataset, irds_dataset, irds_dataset_of_split, irds_split_id, need, offline_irds


# --- ir_datasets --------------------------------------------------------------------------------------------------
def _text_of(item) -> str:
    text = getattr(item, "text", None)
    return text if text is not None else item.default_text()


class IrdsTables:
    """Documents of the id; each split's queries and qrels from `hub_source.irds_split_id`; downloads refused."""

    def __init__(self, dataset_id: str):
        self.id = dataset_id

    def corpus(self):
        def records():
            with offline_irds(self.id):
                for n, doc in enumerate(irds_dataset(self.id).docs_iter(), start=1):
                    yield n, normalise_id(doc.doc_id, self.id, n, "document"), getattr(
                        doc, "title", ""
                    ) or "", _text_of(doc)

        return records(), f"ir_datasets {self.id} docs"

    def queries(self, split):
        where = f"ir_datasets {self.split_id(split)} queries"
        with offline_irds(self.id):
            rows = [
                (n, q.query_id, _text_of(q))
                for n, q in enumerate(irds_dataset_of_split(self.id, split).queries_iter(), 1)
            ]
        return queries_frame(rows, where), where

    def qrels(self, split):
        where = f"ir_datasets {self.split_id(split)} qrels"
        with offline_irds(self.id):
            found = irds_dataset_of_split(self.id, split)
            frame, repeated = judgments_frame(
                ((n, j.query_id, j.doc_id, j.relevance) for n, j in enumerate(found.qrels_iter(), 1)), where
            )
        return frame, repeated, where

    def split_id(self, split: str) -> str:
        return irds_split_id(self.id, split)

    def negatives(self, split):
        return None


# --- Hugging Face -------------------------------------------------------------------------------------------------
def _saved(folder: Path) -> bool:
    """A `save_to_disk` folder (a DatasetDict or one Dataset)."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


@dataclass
class HfFolder:
    folder: Path
    label: str
    """The dataset in errors: its folder, or its Hub id and revision."""

    @classmethod
    def of(cls, role: str, by_id: Mapping[str, Mapping[str, str]], inputs: Mapping[str, Path]) -> "HfFolder | None":
        if role in inputs:
            return cls(Path(inputs[role]), str(inputs[role]))
        if role in by_id:
            spec = by_id[role]
            return cls(cached_hf_dataset(spec["id"], role, spec["revision"]), f"{spec['id']}@{spec['revision'][:12]}")
        return None

    def configs(self) -> list[str]:
        if _saved(self.folder):
            return ["default"]
        saved = sorted(sub.name for sub in self.folder.iterdir() if sub.is_dir() and _saved(sub))
        if saved:
            return saved
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        return list(need("datasets").get_dataset_config_names(str(self.folder)))

    def splits(self, config: str) -> Mapping[str, Any]:
        """split -> a datasets Dataset or IterableDataset (both have .iter(batch_size))."""
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        datasets = need("datasets")
        saved = self.folder if _saved(self.folder) else self.folder / config
        if _saved(saved):
            loaded = datasets.load_from_disk(str(saved))
            return loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        if config not in self.configs():
            raise DataError(
                f"no config {config!r}; configs: {self.configs()}",
                path=self.label,
                fix="check dataset.layout, and for BEIR's layout give the qrels dataset as dataset.qrels",
            )
        return datasets.load_dataset(str(self.folder), None if config == "default" else config, streaming=True)

    def split(self, config: str, split: str | None = None) -> tuple[Any, str]:
        """One split of a config (None: its only split) and where it is, for errors."""
        found = self.splits(config)
        name = split if split is not None else next(iter(found))
        if name not in found:
            raise DataError(
                f"config {config!r} has no split {name!r}; splits: {sorted(found)}",
                path=self.label,
                fix="name these in dataset.splits",
            )
        return found[name], f"{self.label} ({config}/{name}) row"


def hf_folders(by_id: Mapping[str, Mapping[str, str]], inputs: Mapping[str, Path]) -> dict[str, HfFolder]:
    """role ('dataset', 'qrels', 'corpus') -> the folder of each Hugging Face dataset given: by id (the params'
    datasets) or as a local folder (an input)."""
    folders = {role: HfFolder.of(role, by_id, inputs) for role in ("dataset", "qrels", "corpus")}
    return {role: folder for role, folder in folders.items() if folder is not None}


def rows(table, where: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row) of a datasets table, a batch of CHUNK at a time; required columns checked first."""
    number = 0
    for batch in table.iter(batch_size=CHUNK):
        missing = [name for name in required if name not in batch]
        if missing:
            raise DataError(
                f"missing column(s) {missing}; columns: {sorted(batch)}", path=where, fix=f"the rows need {required}"
            )
        names = list(batch)
        for values in zip(*(batch[name] for name in names)):
            number += 1
            yield number, dict(zip(names, values))


class BeirHfTables:
    """BEIR's layout: configs 'corpus' (_id, title, text), 'queries' (_id, text), and qrels (query-id, corpus-id,
    score) per split: the 'qrels' dataset's splits (BeIR/<name>-qrels), else this dataset's 'qrels' or 'default'."""

    def __init__(self, folders: Mapping[str, HfFolder], splits: list[str]):
        self.folders = folders
        self._queries: pd.DataFrame | None = None

    def corpus(self):
        table, where = self.folders["dataset"].split("corpus")
        records = (
            (
                n,
                normalise_id(r["_id"], where, n, "document"),
                text_field(r.get("title"), where, n, "title"),
                text_field(r["text"], where, n, "text"),
            )
            for n, r in rows(table, where, ("_id", "text"))
        )
        return records, where

    def queries(self, split):
        table, where = self.folders["dataset"].split("queries")
        if self._queries is None:
            self._queries = queries_frame(
                ((n, r["_id"], r["text"]) for n, r in rows(table, where, ("_id", "text"))), where
            )
        return self._queries, where

    def qrels(self, split):
        source = self.folders.get("qrels") or self.folders["dataset"]
        configs = source.configs()
        config = "qrels" if "qrels" in configs else "default"
        table, where = source.split(config, split)
        found = rows(table, where, ("query-id", "corpus-id", "score"))
        return (*judgments_frame(((n, r["query-id"], r["corpus-id"], r["score"]) for n, r in found), where), where)

    def negatives(self, split):
        return None


class TevatronHfTables:
    """Tevatron's layout: per split, rows of query_id, query, positive_passages and negative_passages (each passage
    docid, title, text). The corpus: the 'corpus' dataset (docid, title, text) if given, and every passage of the
    rows, each id once; a docid given two texts (or titles) is an error naming both rows."""

    COLUMNS = ("query_id", "query", "positive_passages", "negative_passages")

    def __init__(self, folders: Mapping[str, HfFolder], splits: list[str]):
        self.folders, self.names = folders, splits
        configs = folders["dataset"].configs()
        self.config = "default" if "default" in configs else configs[0]

    def split(self, split: str) -> Iterator[tuple[int, dict, str]]:
        table, where = self.folders["dataset"].split(self.config, split)
        for n, row in rows(table, where, self.COLUMNS):
            yield n, row, where

    def passages(self) -> Iterator[tuple[int, Mapping, str]]:
        """(row, passage, where) of the corpus dataset's rows, then of every passage of every split's rows."""
        if "corpus" in self.folders:
            table, where = self.folders["corpus"].split("default")
            for n, r in rows(table, where, ("docid", "text")):
                yield n, r, where
        for split in self.names:
            for n, row, where in self.split(split):
                for passage in [*row["positive_passages"], *(row["negative_passages"] or [])]:
                    yield n, passage, where

    def corpus(self):
        def records():
            seen: dict[str, int] = {}  # doc id -> hash of its (title, text): the texts themselves would not fit
            for n, passage, where in self.passages():
                doc_id = normalise_id(passage.get("docid"), where, n, "document")
                title = text_field(passage.get("title"), where, n, "title")
                text = text_field(passage.get("text"), where, n, "text")
                if doc_id not in seen:
                    seen[doc_id] = hash((title, text))
                    yield n, doc_id, title, text
                elif seen[doc_id] != hash((title, text)):
                    self._two_texts(doc_id, n, where)

        return records(), self.folders["dataset"].label

    def _two_texts(self, doc_id: str, n: int, where: str) -> None:
        first_n, first_where = next((m, at) for m, p, at in self.passages() if str(p.get("docid")).strip() == doc_id)
        raise DataError(
            f"document {doc_id!r} has another text (or title) than where it is first given in {first_where} {first_n}",
            path=where,
            line=n,
            fix="give each docid one text: correct or remove one of the two passages",
        )

    def queries(self, split):
        found = [(n, row["query_id"], row["query"], where) for n, row, where in self.split(split)]
        where = found[0][3] if found else self.folders["dataset"].label
        return queries_frame(((n, q, text) for n, q, text, _ in found), where), where

    def qrels(self, split):
        found = [(n, row, where) for n, row, where in self.split(split)]
        where = found[0][2] if found else self.folders["dataset"].label
        judged = ((n, row["query_id"], p.get("docid"), 1) for n, row, _ in found for p in row["positive_passages"])
        return (*judgments_frame(judged, where), where)

    def negatives(self, split):
        given: dict[str, list[str]] = {}
        for n, row, where in self.split(split):
            query = normalise_id(row["query_id"], where, n, "query")
            given[query] = [normalise_id(p.get("docid"), where, n, "document") for p in row["negative_passages"] or []]
        return given
