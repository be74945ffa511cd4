"""Where a dataset read by id is: an ir_datasets id, or a Hugging Face dataset (local folder or Hub id in the local
cache). Nothing here downloads; the plan locates them (`stages.core.dataset_formats`) so that a dataset missing from
the cache fails before any stage runs. ir_datasets and datasets are imported only for these formats (the `datasets`
extra).

The prepare key holds each dataset read by id with its revision (ir_datasets: the package version, whose registry pins
every file by checksum, and a fingerprint of the cached files read: their names, sizes and mtimes, so that data
replaced under the same id is prepared again; a Hub id: the cached commit); a local folder is an input, keyed by its
content.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import lzma
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .errors import ConfigError, DataError

EXTRA_FIX = "install the extra: pip install -e '.[datasets]' (or pip install ir_datasets datasets)"
# dataset config key -> role of the Hugging Face dataset it names
HF_ROLES = {"qrels": "qrels", "corpus": "corpus"}


def need(module: str):
    """Import an optional dependency, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"dataset.format needs the Python package {module!r}", fix=EXTRA_FIX) from None


@dataclass
class HubSource:
    datasets: dict[str, dict[str, str]] = field(default_factory=dict)
    """role -> {'id', 'revision'} of each dataset read by id (prepare params)."""
    folders: dict[str, Path] = field(default_factory=dict)
    """role -> local folder (prepare inputs, keyed by content)."""


def locate_irds(dataset: Mapping[str, Any]) -> HubSource:
    """The ir_datasets dataset of a config (its ``dataset`` section), checked to be readable offline."""
    if not dataset.get("id"):
        raise ConfigError("dataset.format ir_datasets needs dataset.id", fix="set dataset.id, e.g. beir/scifact")
    cache = check_irds_cached(dataset["id"], dataset["splits"])
    version = need("ir_datasets").__version__
    return HubSource({"dataset": {"id": dataset["id"], "revision": f"ir_datasets {version}", "cache": cache}})


def locate_hf(dataset: Mapping[str, Any]) -> HubSource:
    """The Hugging Face datasets of a config (its ``dataset`` section), local folders or in the local Hub cache."""
    source = HubSource()
    specs = {"dataset": dataset.get("id") or dataset.get("path")}
    specs |= {role: dataset.get(key, "") for key, role in HF_ROLES.items()}
    if not specs["dataset"]:
        raise ConfigError("dataset.format hf needs dataset.path (a folder) or dataset.id (a Hub id)")
    for role, spec in specs.items():
        if not spec:
            continue
        folder = Path(spec).expanduser()
        key = f"dataset.{role}" if role != "dataset" else "dataset.id" if dataset.get("id") else "dataset.path"
        if folder.is_dir():
            check_hf_folder(folder, key, local=True)
            source.folders[role] = folder
        else:
            snapshot = cached_hf_dataset(spec, role, key=key)
            check_hf_folder(snapshot, key, local=False)
            source.datasets[role] = {"id": spec, "revision": snapshot.name}
    return source


HF_FOLDER_FIX = "give a folder the datasets library reads without code: save_to_disk's, or parquet, json or csv files"
NOT_DATA = {"README.md", ".gitattributes"}


def check_hf_folder(folder: Path, key: str, local: bool) -> None:
    """Refused here as datasets would refuse it in `prepare`: a folder with no data file, or a dataset's loading script
    (datasets runs none: a local folder's ``<folder name>.py``, or scripts where there is no data)."""
    files = (path for path in folder.rglob("*") if path.is_file())
    visible = (path for path in files if not any(part.startswith(".") for part in path.relative_to(folder).parts))
    data = next((path for path in visible if path.name not in NOT_DATA and path.suffix != ".py"), None)
    own = folder / f"{folder.name}.py"
    scripts = [own] if local and own.is_file() else sorted(folder.glob("*.py")) if data is None else []
    if scripts:
        raise DataError(
            f"{key}: a dataset with a loading script ({scripts[0].name}), which the datasets library no longer runs",
            path=folder,
            fix="where the script runs (datasets < 4), load it and save_to_disk; or convert it to parquet files",
        )
    if data is None:
        raise DataError(f"{key}: no data files in this folder", path=folder, fix=HF_FOLDER_FIX)


def cached_hf_dataset(repo_id: str, role: str = "dataset", revision: str | None = None, key: str = "") -> Path:
    """The snapshot folder of a Hub dataset in the local Hugging Face cache (never downloaded); ``key``: the setting
    that named it (default: dataset.id, or dataset.<role>)."""
    hub = need("huggingface_hub")
    try:
        return Path(hub.snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True))
    except Exception as error:  # not cached, or not a valid id
        key = key or ("dataset.id" if role == "dataset" else f"dataset.{role}")
        raise DataError(
            f"{key}: {repo_id!r} is not a local folder and not a Hugging Face dataset in the local cache "
            f"({hub.constants.HF_HUB_CACHE}): {type(error).__name__}; stages never download",
            fix=f"download it on a machine with network (`hf download {repo_id} --repo-type dataset`) into that cache "
            "(HF_HOME or HF_HUB_CACHE point at it), or give a local folder",
        ) from None


# --- ir_datasets --------------------------------------------------------------------------------------------------
DAMAGED = (
    zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError, UnicodeDecodeError,
)  # fmt: skip
"""What reading a damaged cached file raises (a truncated download, an HTML error page saved as the file)."""


class NotCached(DataError):
    """ir_datasets wanted to download a file."""


def irds_fix(dataset_id: str) -> str:
    parts = " && ".join(f"ir_datasets export {dataset_id} {what} > /dev/null" for what in ("docs", "queries", "qrels"))
    return (
        f"fill the cache once on a machine with network ({parts}; for each split's id too) and copy ~/.ir_datasets "
        "here (or point IR_DATASETS_HOME at it); or use a local folder with dataset.format: beir"
    )


@contextlib.contextmanager
def offline_irds(dataset_id: str, handed_out: set[str] | None = None) -> Iterator[None]:
    """Within: any file ir_datasets would download raises NotCached at once (no request, no retries). The cached
    files it hands out are added to ``handed_out``."""
    download = need("ir_datasets").util.download
    cls, original_path, original_stream = download.Download, download.Download.path, download.Download.stream

    def cached(self) -> bool:
        local = [m.path for m in self.mirrors if isinstance(m, download.LocalDownload)]
        paths = [p for p in [self._path, self._cache_path, *local] if p is not None]
        return any(Path(p).exists() for p in paths)

    def refuse(self):
        where = self._cache_path or next((getattr(m, "url", None) for m in self.mirrors if hasattr(m, "url")), "")
        raise NotCached(
            f"ir_datasets {dataset_id!r}: {where} is not in the ir_datasets cache", fix=irds_fix(dataset_id)
        )

    last_file: str | None = None  # the cached file handed out last: the one a damaged-file error is about

    def path(self, force=True):
        nonlocal last_file
        last_file = original_path(self, force) if not force or cached(self) else refuse(self)
        if handed_out is not None and last_file is not None:
            handed_out.add(str(last_file))
        return last_file

    def stream(self):
        streams_remote = self._stream and not isinstance(self.mirrors[0], download.LocalDownload)
        return refuse(self) if streams_remote else original_stream(self)

    cls.path, cls.stream = path, stream
    try:
        yield
    except DAMAGED as error:
        raise DataError(
            f"ir_datasets {dataset_id!r}: the cached file is damaged ({type(error).__name__}: {error})",
            path=last_file,
            fix=f"delete it, then {irds_fix(dataset_id)}",
        ) from None
    finally:
        cls.path, cls.stream = original_path, original_stream


def irds_split_id(dataset_id: str, split: str) -> str:
    """The id of a split's queries and qrels: ``<id>/<split>``, else the sibling ``<parent>/<split>``, else the id
    itself when it ends in the split (``beir/scifact/train`` for train)."""
    parent = dataset_id.rsplit("/", 1)[0]
    for candidate in (
        f"{dataset_id}/{split}",
        f"{parent}/{split}",
        dataset_id if dataset_id.endswith(f"/{split}") else "",
    ):
        found = registered(candidate) if candidate else None
        if found is not None and found.has_queries() and found.has_qrels():
            return candidate
    children = sorted(name for name in need("ir_datasets").registry if name.startswith(f"{parent}/"))
    raise ConfigError(
        f"dataset.splits: ir_datasets has no queries and qrels for split {split!r} of {dataset_id!r}",
        fix=f"name splits whose <id>/<split> exists; ids under {parent}: {children[:12]}",
    )


def registered(dataset_id: str):
    """The ir_datasets dataset of an id, or None."""
    try:
        return need("ir_datasets").registry[dataset_id]
    except KeyError:
        return None


def irds_dataset(dataset_id: str):
    found = registered(dataset_id)
    if found is None:
        raise ConfigError(
            f"dataset.id: {dataset_id!r} is not an ir_datasets id",
            fix="see https://ir-datasets.com for the ids (e.g. beir/scifact, msmarco-passage)",
        )
    if not found.has_docs():
        raise ConfigError(f"dataset.id: ir_datasets {dataset_id!r} has no documents", fix="name the collection's id")
    return found


def check_irds_cached(dataset_id: str, splits: list[str]) -> str:
    """Read the first document, query and judgment of each split with downloads refused (NotCached at once if not);
    returns the fingerprint of the cached files read (`files_fingerprint`)."""
    collection = irds_dataset(dataset_id)
    handed_out: set[str] = set()
    with offline_irds(dataset_id, handed_out):
        next(iter(collection.docs_iter()), None)
        for split in splits:
            found = irds_dataset_of_split(dataset_id, split)
            next(iter(found.queries_iter()), None)
            next(iter(found.qrels_iter()), None)
    return files_fingerprint(handed_out)


def files_fingerprint(paths: Iterable[str]) -> str:
    """What changes when a cached file is replaced: each file's name, size and mtime, hashed (16 hex digits). A cache
    copied to another machine gets new mtimes, so its datasets are prepared again there once."""
    entries = []
    for path in sorted(set(paths)):
        stat = Path(path).stat() if Path(path).exists() else None
        entries.append(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}" if stat else f"{path}\tmissing")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def irds_dataset_of_split(dataset_id: str, split: str):
    return need("ir_datasets").registry[irds_split_id(dataset_id, split)]
