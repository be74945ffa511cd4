"""The export stage's work: the trained encoders as one sentence-transformers model (a Router with a query and a
document route), optionally as ONNX, its model card (`card`) and an upload to the Hugging Face Hub."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..core.cli import run_stage
from ..core.errors import ConfigError
from ..ml.encoder_spec import EncoderSpec

ROUTES = ("query", "document")
NOT_UPLOADED = {"manifest.json", "summary.json"}
"""The artifact's own records (host, paths): not part of the published model."""
log = logging.getLogger("stages.export")


@dataclass
class ExportParams(EncoderSpec):
    """`EncoderSpec`'s fields (the base encoder when there is no ``documents`` input), and:"""

    name: str
    """The experiment's name, for the card."""
    method: str
    seed: int | None
    query_max_length: int
    doc_max_length: int
    dataset: str
    """The training data's name (the dataset folder's), for the card."""
    dataset_license: str
    """An SPDX-style id for the card; auto: known for SciFact (`card.DATASETS`), else 'unknown'."""
    onnx: bool
    """Also write onnx/query.onnx and onnx/document.onnx (torch.onnx; needs the onnx and onnxscript packages)."""
    push_to_hub: str
    """A Hub repo id to upload the model to (needs a token); empty: no upload."""


def export(params: ExportParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    from .card import model_card
    from ..core.artifacts import MODEL_SUBDIR

    out_dir = Path(out_dir)
    documents = str(Path(inputs["documents"]) / MODEL_SUBDIR) if "documents" in inputs else params.model
    queries = str(Path(inputs["queries"]) / MODEL_SUBDIR) if "queries" in inputs else documents
    sources = {"query": (queries, params.query_max_length), "document": (documents, params.doc_max_length)}
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out_dir) as staging:
        routes = route_modules(sources, params, Path(staging))
        model = SentenceTransformer(modules=[Router.for_query_document(*(routes[r][0] for r in ROUTES))], device="cpu")
        model.similarity_fn_name = "dot"  # the pipeline ranks by inner product
        model.save(str(out_dir))
    if params.onnx:
        for route, (_, encoder, length) in routes.items():
            export_onnx(encoder, out_dir / "onnx" / f"{route}.onnx", length)
    (out_dir / "README.md").write_text(model_card(params, inputs, separate=queries != documents))
    if params.push_to_hub:
        push_to_hub(out_dir, params.push_to_hub)
    return {"document_encoder": documents, "query_encoder": queries, "separate_query_encoder": queries != documents}


def route_modules(sources: Mapping[str, tuple[str, int]], params: ExportParams, staging: Path) -> dict:
    """route -> (sentence-transformers modules, the pipeline's Encoder, max length); routes with the same encoder
    and length share their modules (stored once)."""
    from sentence_transformers import SentenceTransformer

    from ..ml.models import load_encoder, save_encoder

    made: dict[tuple[str, int], tuple] = {}
    for route, (source, length) in sources.items():
        if (source, length) not in made:
            encoder = load_encoder(source, pooling=params.pooling, normalize=params.normalize).eval()
            save_encoder(encoder, staging / route, max_seq_length=length)
            made[(source, length)] = (list(SentenceTransformer(str(staging / route), device="cpu")), encoder, length)
        log.info("%s route: %s (max %d tokens)", route, source, length)
    return {route: made[key] for route, key in sources.items()}


def export_onnx(encoder, path: Path, max_length: int) -> None:
    """``encoder`` (transformer, pooling, normalisation) as ONNX: inputs input_ids and attention_mask (batch,
    tokens; int64), output sentence_embedding (batch, dim) float32."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = encoder.tokenize(["an example text", "another one"], max_length)
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    try:
        torch.onnx.export(
            encoder,
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}},
            dynamo=True,
        )
    except ImportError as error:
        fix = "pip install 'hardneg[onnx]', or set export.onnx: false"
        raise ConfigError(f"ONNX export needs the {error.name} package", fix=fix) from None


def upload_files(folder: Path) -> list[str]:
    """The files `push_to_hub` uploads, relative to ``folder``: the model, its card and ONNX files, not the
    artifact's records."""
    files = (p.relative_to(folder).as_posix() for p in sorted(Path(folder).rglob("*")) if p.is_file())
    return [f for f in files if f not in NOT_UPLOADED and not f.startswith(".")]


def push_to_hub(folder: Path, repo_id: str, api=None) -> list[str]:
    """Upload ``upload_files(folder)`` to the Hub model repo ``repo_id`` (created if missing); the files sent."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    files = upload_files(folder)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files, commit_message="hardneg export")
    log.info("uploaded %d files to %s", len(files), repo_id)
    return files


def main(argv: list[str] | None = None) -> int:
    return run_stage("export", ExportParams, export, argv)

