"""Stage `export`: the trained retriever as sentence-transformers folders, for use outside the pipeline.

Outputs ``document-encoder/`` (the encoder that filled the index) and ``query-encoder/`` (ADORE's query encoder, or
the same encoder as the documents for STAR and the other shared-weight methods), each loadable with
``SentenceTransformer(path)`` and giving the embeddings the pipeline computed (float32 safetensors, no pickles), and a
README.md saying how to use them.

Inputs: optional ``documents`` (a training artifact with model/; otherwise ``model``, the base encoder), optional
``queries`` (an ADORE artifact with model/).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .core.cli import run_stage

VERSION = 1
DOCUMENT_ENCODER, QUERY_ENCODER = "document-encoder", "query-encoder"

USAGE = """# {name}

Exported by the `export` stage of hardneg ({method}).

```python
from sentence_transformers import SentenceTransformer

documents = SentenceTransformer("{document}")   # encodes the corpus (max {doc_max_length} tokens)
queries = SentenceTransformer("{query}")       # encodes queries (max {query_max_length} tokens)
scores = queries.encode(["a question"]) @ documents.encode(["a passage"]).T   # inner product
```

{note}
"""


@dataclass
class ExportParams:
    name: str = "retriever"
    """The experiment's name, for the README."""
    method: str = "star"
    model: str = "bundled"
    """Base encoder when there is no ``documents`` input."""
    pooling: str = "auto"
    normalize: str = "auto"
    query_max_length: int = 64
    doc_max_length: int = 256


def export(params: ExportParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    from .ml.models import MODEL_SUBDIR, load_encoder, save_encoder

    documents = str(Path(inputs["documents"]) / MODEL_SUBDIR) if "documents" in inputs else params.model
    queries = str(Path(inputs["queries"]) / MODEL_SUBDIR) if "queries" in inputs else documents
    document_encoder = load_encoder(documents, pooling=params.pooling, normalize=params.normalize)
    save_encoder(document_encoder, Path(out_dir) / DOCUMENT_ENCODER, max_seq_length=params.doc_max_length)
    query_encoder = load_encoder(queries, pooling=params.pooling, normalize=params.normalize)
    save_encoder(query_encoder, Path(out_dir) / QUERY_ENCODER, max_seq_length=params.query_max_length)
    separate = queries != documents
    note = (
        "ADORE trained the query encoder against the fixed document embeddings: use the two together."
        if separate
        else "Both folders hold the same encoder (queries and documents share weights)."
    )
    (Path(out_dir) / "README.md").write_text(
        USAGE.format(
            name=params.name,
            method=params.method,
            document=DOCUMENT_ENCODER,
            query=QUERY_ENCODER,
            doc_max_length=params.doc_max_length,
            query_max_length=params.query_max_length,
            note=note,
        )
    )
    return {"document_encoder": documents, "query_encoder": queries, "separate_query_encoder": separate}


def main(argv: list[str] | None = None) -> int:
    return run_stage("export", ExportParams, export, argv)


if __name__ == "__main__":
    sys.exit(main())
