"""Dataset formats (the ``dataset.format`` setting) and the layouts of Hugging Face datasets (``dataset.layout``): how
the plan finds a format's inputs and checks them, which params `prepare` takes for it, the reader that gives `prepare`
its tables, and whether its datasets carry negatives. A new format is one entry of `FORMATS` (and the schema's enum),
its reader and its test; no other code branches on a format's name.

The plan reads this registry when the Snakefile is parsed, so the readers (pandas, datasets, ir_datasets) are imported
where they are used, not at the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, TypeVar

from . import hub_source
from .errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")


class Tables(Protocol):
    """A dataset's records as `prepare` reads them, each with where it comes from (a file, or a dataset id) for
    errors."""

    def corpus(self) -> tuple[Iterable[tuple[int, str, str, str]], Path | str]:
        """(line, doc id, title, text) records."""

    def queries(self, split: str) -> tuple[pd.DataFrame, Path | str]:
        """`dataset_records.queries_frame` of the split's queries."""

    def qrels(self, split: str) -> tuple[pd.DataFrame, int, Path | str]:
        """`dataset_records.judgments_frame` of the split's judgments."""

    def negatives(self, split: str) -> dict[str, list[str]] | None:
        """Given negatives of the split's queries (None: the dataset has none)."""


@dataclass(frozen=True)
class Source:
    """Where the plan found a dataset: what it adds to the `prepare` node."""

    params: dict[str, Any]
    """The prepare params beyond those of every format (a format read by id: its layout and datasets)."""
    inputs: dict[str, Path]
    """Input name -> file or folder, keyed by its content."""


@dataclass(frozen=True)
class Layout:
    name: str
    tables: Callable[[Mapping[str, Any], list[str]], Tables]
    """(role -> `hub_readers.HfFolder`, splits) -> the tables of a dataset in this layout."""
    negatives: bool = False
    """Its rows carry negatives: `prepare` writes them, and ``mine.source: given`` trains on them."""


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    locate: Callable[[Mapping[str, Any]], Source]
    """(the config's ``dataset`` section) -> its Source, checked before any stage runs: the first missing file or
    dataset is an error naming it."""
    tables: Callable[[Any, Mapping[str, Path]], Tables]
    """(prepare params, inputs) -> the tables `prepare` reads."""
    by_id: bool = False
    """Its datasets are read by id: `prepare.HubPrepareParams` (the layout, and each dataset's id and revision; local
    folders are inputs). Else `prepare.PrepareParams`, with the folder's files as inputs."""
    layouts: Mapping[str, Layout] = field(default_factory=dict)
    """The layouts ``dataset.layout`` picks between; none: the format has one, and the setting does not apply."""

    def layout(self, name: str | None) -> Layout | None:
        """The layout ``name`` (a ConfigError listing them if unknown); None for a format without layouts."""
        return choose(self.layouts, name, "dataset.layout") if self.layouts else None

    def carries_negatives(self, layout: str | None) -> bool:
        """Whether its datasets, in ``layout``, carry their own negatives (for ``mine.source: given``)."""
        found = self.layout(layout)
        return found is not None and found.negatives


def choose(entries: Mapping[str, T], name: str, setting: str) -> T:
    """The entry of ``name``; a ConfigError listing the allowed values if there is none."""
    if name not in entries:
        allowed = sorted(entries)
        raise ConfigError(f"{setting}: unknown value {name!r}; allowed: {allowed}", fix=f"set {setting} to one of them")
    return entries[name]


def dataset_format(name: str) -> DatasetFormat:
    return choose(FORMATS, name, "dataset.format")


def with_negatives() -> list[str]:
    """The settings whose datasets carry negatives, as 'dataset.format: F with dataset.layout: L'."""
    return [
        f"dataset.format: {found.name} with dataset.layout: {layout.name}"
        for found in FORMATS.values()
        for layout in found.layouts.values()
        if layout.negatives
    ]


def dataset_files(root: Path, name: str, splits: list[str]) -> dict[str, Path]:
    """The checked inputs of a folder ``root`` in the folder format ``name`` (beir, msmarco), as the plan finds them."""
    return dataset_format(name).locate({"format": name, "path": str(root), "splits": splits}).inputs


# --- a folder of named files ---------------------------------------------------------------------------------------
def beir_files(root: Path, splits: list[str]) -> dict[str, Path]:
    """corpus.jsonl (or corpus.jsonl.gz), queries.jsonl, qrels/<split>.tsv."""
    corpus = root / "corpus.jsonl"
    if not corpus.exists() and (root / "corpus.jsonl.gz").exists():
        corpus = root / "corpus.jsonl.gz"
    files = {"corpus": corpus, "queries": root / "queries.jsonl"}
    return files | {f"qrels_{split}": root / "qrels" / f"{split}.tsv" for split in splits}


def msmarco_files(root: Path, splits: list[str]) -> dict[str, Path]:
    """collection.tsv, queries.<split>.tsv, qrels.<split>.tsv."""
    files = {"corpus": root / "collection.tsv"}
    files |= {f"queries_{split}": root / f"queries.{split}.tsv" for split in splits}
    return files | {f"qrels_{split}": root / f"qrels.{split}.tsv" for split in splits}


def locate_folder(files: Callable[[Path, list[str]], dict[str, Path]], dataset: Mapping[str, Any]) -> Source:
    """The ``files`` of the folder dataset.path; a DataError names the first missing one."""
    if not dataset.get("path"):
        raise ConfigError(
            f"dataset.format {dataset['format']} needs dataset.path", fix="set dataset.path to the dataset's folder"
        )
    found = files(Path(dataset["path"]), dataset["splits"])
    for name, path in found.items():
        if not path.is_file():
            raise DataError(
                f"dataset file for {name!r} not found",
                path=path,
                fix=f"check dataset.path and dataset.format ({dataset['format']}) in the config",
            )
    return Source({}, found)


def beir_folder_tables(params: Any, inputs: Mapping[str, Path]) -> Tables:
    from .folder_readers import BeirFolderTables

    return BeirFolderTables(inputs)


def msmarco_folder_tables(params: Any, inputs: Mapping[str, Path]) -> Tables:
    from .folder_readers import MsmarcoFolderTables

    return MsmarcoFolderTables(inputs)


# --- datasets read by id (`hub_source` locates them, `hub_readers` reads them) -------------------------------------
def by_id(source: hub_source.HubSource, dataset: Mapping[str, Any]) -> Source:
    return Source({"layout": dataset["layout"], "datasets": source.datasets}, dict(source.folders))


def locate_irds(dataset: Mapping[str, Any]) -> Source:
    return by_id(hub_source.locate_irds(dataset), dataset)


def locate_hf(dataset: Mapping[str, Any]) -> Source:
    choose(HF_LAYOUTS, dataset["layout"], "dataset.layout")
    return by_id(hub_source.locate_hf(dataset), dataset)


def irds_tables(params: Any, inputs: Mapping[str, Path]) -> Tables:
    from .hub_readers import IrdsTables

    return IrdsTables(params.datasets["dataset"]["id"])


def hf_tables(params: Any, inputs: Mapping[str, Path]) -> Tables:
    from .hub_readers import hf_folders

    layout = choose(HF_LAYOUTS, params.layout, "dataset.layout")
    return layout.tables(hf_folders(params.datasets, inputs), params.splits)


def beir_hf_tables(folders: Mapping[str, Any], splits: list[str]) -> Tables:
    from .hub_readers import BeirHfTables

    return BeirHfTables(folders, splits)


def tevatron_hf_tables(folders: Mapping[str, Any], splits: list[str]) -> Tables:
    from .hub_readers import TevatronHfTables

    return TevatronHfTables(folders, splits)


HF_LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("beir", beir_hf_tables),
        Layout("tevatron", tevatron_hf_tables, negatives=True),
    )
}

FORMATS: dict[str, DatasetFormat] = {
    found.name: found
    for found in (
        DatasetFormat("beir", partial(locate_folder, beir_files), beir_folder_tables),
        DatasetFormat("msmarco", partial(locate_folder, msmarco_files), msmarco_folder_tables),
        DatasetFormat("ir_datasets", locate_irds, irds_tables, by_id=True),
        DatasetFormat("hf", locate_hf, hf_tables, by_id=True, layouts=HF_LAYOUTS),
    )
}
