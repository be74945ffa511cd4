"""Where a dataset's files are: the named input files of a BEIR or MS MARCO folder (no parsing, no heavy imports;
the plan uses it to name the `prepare` stage's inputs)."""

from __future__ import annotations

from pathlib import Path

from .errors import DataError


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
