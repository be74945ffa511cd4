"""The exported retriever's model card (README.md): YAML metadata for the Hugging Face Hub, then usage, metrics,
training config, data and its license, and the paper's citation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import yaml

from ..core.model_source import BUNDLED_NAMES

BUNDLED_ID = "sentence-transformers/all-MiniLM-L6-v2"
DATASETS = {"scifact": {"id": "BeIR/scifact", "name": "SciFact (BEIR layout)", "license": "cc-by-nc-2.0"}}
"""What the card says of a known dataset folder name (resources/scifact: README.md and NOTICE)."""
METHODS = {
    "zeroshot": "the base encoder, untrained",
    "warmup": "warm-up training on BM25 or random negatives",
    "star": "STAR: static hard negatives plus in-batch random negatives",
    "ance": "ANCE: rounds of hard negatives re-mined by the model being trained",
    "adore": "ADORE: a query encoder trained on dynamic hard negatives against fixed document embeddings",
}
CITATION = """@inproceedings{zhan2021optimizing,
  title     = {Optimizing Dense Retrieval Model Training with Hard Negatives},
  author    = {Zhan, Jingtao and Mao, Jiaxin and Liu, Yiqun and Guo, Jiafeng and Zhang, Min and Ma, Shaoping},
  booktitle = {Proceedings of the 44th International ACM SIGIR Conference on Research and Development in
               Information Retrieval},
  pages     = {1503--1512},
  year      = {2021},
  doi       = {10.1145/3404835.3462880}
}"""
USAGE = """```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{path}")
queries = model.encode_query(["what causes scurvy?"])            # truncated at {query_max_length} tokens
documents = model.encode_document([(title + " " + text).strip() for title, text in corpus])  # {doc_max_length} tokens
scores = model.similarity(queries, documents)                     # inner product, as the pipeline ranks
```

Documents are encoded as `title + " " + text` with surrounding spaces stripped (an empty title gives the text
alone), the BEIR / sentence-transformers convention the pipeline used to fill its index: pass them so to
`encode_document` to get the same embeddings."""


def model_card(params, inputs: Mapping[str, Path], separate: bool) -> str:
    """The card's text for an `stage.ExportParams` and the stage's inputs (training and score artifacts)."""
    dataset = DATASETS.get(params.dataset, {"id": params.dataset, "name": params.dataset, "license": "unknown"})
    license_ = dataset["license"] if params.dataset_license == "auto" else params.dataset_license
    metrics = split_metrics(inputs)
    seed = "" if params.seed is None else f" (seed {params.seed})"
    attribution = " SciFact: Wadden et al., EMNLP 2020, non-commercial use with attribution."
    stages = training_params(inputs)
    metadata = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "feature-extraction", "dense-retrieval", "hard-negatives", params.method],
        **({"base_model": base_model_id(params.model)} if base_model_id(params.model) else {}),
        "datasets": [dataset["id"]],
        "training_data_license": license_,
        "model-index": [{"name": params.name, "results": model_index(metrics, dataset)}],
        "hardneg": {"method": params.method, "seed": params.seed, "export": vars(params), "stages": stages},
    }
    sections = [
        f"---\n{yaml.safe_dump(metadata, sort_keys=False, width=120)}---",
        f"# {params.name}",
        f"A dense retriever exported by hardneg (Zhan et al., SIGIR 2021, arXiv:2104.08051): "
        f"{METHODS.get(params.method, params.method)}{seed}, from base encoder "
        f"`{base_model_id(params.model) or params.model}`. One model, two routes: `encode_query` and "
        "`encode_document`. "
        + route_note(separate, params),
        "## Usage\n\n" + USAGE.replace("{path}", params.push_to_hub or f"path/to/{params.name}").format(**vars(params)),
        "## Metrics\n\n" + metrics_table(metrics, params.seed),
        "## Training configuration\n\nThe parameters of the stages that made the encoders (also in the metadata "
        f"above):\n\n```yaml\n{yaml.safe_dump(stages or {'base encoder': params.model}, sort_keys=False)}```",
        f"## Training data\n\n{dataset['name']} (`{params.dataset}`), license `{license_}`."
        + (attribution if params.dataset == "scifact" else ""),
        onnx_note(params) if params.onnx else "",
        f"## Citation\n\n```bibtex\n{CITATION}\n```",
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def base_model_id(model: str) -> str | None:
    """The base model's Hub id (None for a local folder)."""
    if model in BUNDLED_NAMES:
        return BUNDLED_ID
    return None if Path(model).exists() or "/" not in model else model


def route_note(separate: bool, params) -> str:
    if separate:
        return "ADORE trained the query route against the document route's fixed embeddings: use the two together."
    if params.query_max_length == params.doc_max_length:
        return "Both routes share one encoder."
    return "Both routes hold the same weights (stored twice: each route truncates at its own length)."


def split_metrics(inputs: Mapping[str, Path]) -> dict[str, dict]:
    """split -> metrics.json of the ``score_<split>`` inputs."""
    return {
        name.removeprefix("score_"): json.loads((Path(path) / "metrics.json").read_text())
        for name, path in sorted(inputs.items())
        if name.startswith("score_")
    }


def training_params(inputs: Mapping[str, Path]) -> dict[str, dict]:
    """stage -> params, from the manifests of the training artifacts the encoders come from."""
    found = {}
    for name in ("documents", "queries"):
        if name in inputs:
            manifest = json.loads((Path(inputs[name]) / "manifest.json").read_text())
            found[manifest["stage"]] = manifest["params"]
    return found


def measure_type(name: str) -> str:
    """nDCG@10 -> ndcg_at_10, R@100 -> recall_at_100 (the Hub's metric names)."""
    name = name.lower().replace("@", "_at_")
    return "recall" + name[1:] if name.startswith("r_at_") else name


def model_index(metrics: Mapping[str, dict], dataset: Mapping[str, str]) -> list[dict]:
    return [
        {
            "task": {"type": "retrieval", "name": "Retrieval"},
            "dataset": {"name": dataset["name"], "type": dataset["id"], "split": split},
            "metrics": [
                {"type": measure_type(m), "value": round(v["mean"], 4), "name": m}
                for m, v in result["metrics"].items()
            ],
        }
        for split, result in metrics.items()
    ]


def metrics_table(metrics: Mapping[str, dict], seed: int | None) -> str:
    if not metrics:
        return "No scores were given to the export."
    measures = list(next(iter(metrics.values()))["metrics"])
    lines = ["| split | seed | queries | " + " | ".join(measures) + " |", "|---" * (3 + len(measures)) + "|"]
    for split, result in metrics.items():
        cells = [f"{v['mean']:.4f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" for v in result["metrics"].values()]
        lines.append(f"| {split} | {'-' if seed is None else seed} | {result['queries']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nMeans over the split's judged queries, with bootstrap 95% intervals."


def onnx_note(params) -> str:
    return (
        "## ONNX\n\n`onnx/query.onnx` and `onnx/document.onnx`: inputs `input_ids` and `attention_mask` (int64, "
        "batch x tokens) from the route's tokenizer (`query_0_Transformer/`, `document_0_Transformer/`) with "
        f"truncation at {params.query_max_length} / {params.doc_max_length} tokens; output `sentence_embedding`."
    )
