"""What every artifact holds, by name, and how stages name their inputs: each file name stated once.

An artifact is ``results/<stage>/<key>/``; the stages write these files into it and read them from their inputs.
Nothing here reads or writes (that is `stages.core.tables`, `stages.core.store`, `stages.ml.models`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence, TypeVar

from .errors import ArtifactError, ConfigError

# every artifact (`stages.core.store`, `stages.core.cli`)
MANIFEST = "manifest.json"
SUMMARY = "summary.json"

# prepare
CORPUS, QUERIES, QRELS = "corpus.parquet", "queries.parquet", "qrels.parquet"
TRAIN_SPLIT, DEV_SPLIT = "train", "dev"
"""The split the trainers learn from, and the one carved from it to tune and pick checkpoints on."""

# mine_negatives (and prepare, for a dataset that carries its negatives)
NEGATIVES = "negatives.parquet"

# tokenize
TOKENS = "tokens.parquet"

# encode
EMBEDDINGS = "embeddings.parquet"

# index (flat: vectors/shard_<n>.parquet, the encode shards' embeddings.parquet hard-linked; pq: index.faiss)
INDEX_FILE, DOC_IDS_FILE, KIND_FILE = "index.faiss", "doc_ids.parquet", "kind.json"
VECTORS_DIR = "vectors"
VECTOR_FILE = re.compile(r"shard_(\d+)\.parquet")

# bm25_index (beside bm25s' own files, `stages.ml.lexical`)
BM25_SETTINGS = "settings.json"

# bm25, retrieve (runs)
RUN_PARQUET, RUN_TREC = "run.parquet", "run.trec"

# score
PER_QUERY = "per_query.parquet"

# the trainers
MODEL_SUBDIR = "model"
TRAIN_LOG, LOSS_PLOT, TENSORBOARD_DIR = "train_log.parquet", "loss.png", "tensorboard"

# inputs: a stage that reads the corpus's encode shards takes them as shard_0 .. shard_<n-1>
SHARD_INPUT = re.compile(r"shard_(\d+)")

T = TypeVar("T")


def shard_inputs(shards: Sequence[T]) -> dict[str, T]:
    """The named inputs ``shard_<n>`` of the corpus's encode shards, in order."""
    return {f"shard_{n}": shard for n, shard in enumerate(shards)}


def shard_files(inputs: Mapping[str, Path]) -> list[Path]:
    """The embeddings file of each ``shard_<n>`` input (other inputs are ignored), ordered by n; the numbers must be
    0..count-1 and each must be an encode artifact."""
    numbered = {}
    for name, path in inputs.items():
        match = SHARD_INPUT.fullmatch(name)
        if match:
            numbered[int(match.group(1))] = Path(path) / EMBEDDINGS
    if sorted(numbered) != list(range(len(numbered))) or not numbered:
        raise ConfigError(
            f"shard inputs must be shard_0 .. shard_<n-1>; got {sorted(inputs)}", fix="name every encode shard input"
        )
    files = [numbered[n] for n in range(len(numbered))]
    for file in files:
        if not file.is_file():
            raise ArtifactError(f"no {EMBEDDINGS}: not an encode artifact", path=file.parent)
    return files


def vector_file(number: int) -> str:
    """The name in a flat index artifact of the embeddings of its ``number``-th shard (rows in shard order)."""
    return f"{VECTORS_DIR}/shard_{number}.parquet"


def vector_files(artifact: Path) -> list[Path]:
    """A flat index artifact's embeddings files (`vector_file`), in row order."""
    folder = Path(artifact) / VECTORS_DIR
    numbered = {}
    for path in folder.iterdir() if folder.is_dir() else []:
        if match := VECTOR_FILE.fullmatch(path.name):
            numbered[int(match.group(1))] = path
    if not numbered or sorted(numbered) != list(range(len(numbered))):
        raise ArtifactError(
            f"no {VECTORS_DIR}/shard_0.parquet .. shard_<n-1>.parquet: not a flat index artifact",
            path=artifact,
            fix="rerun the index stage",
        )
    return [numbered[n] for n in range(len(numbered))]
