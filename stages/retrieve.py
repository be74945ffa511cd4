"""Stage `retrieve`: dense retrieval: encode a split's queries and search an `index` artifact.

Inputs: ``prepared`` (queries), ``index`` (an `index` artifact) and optionally ``model`` (a training artifact; its
``model/`` folder is the query encoder and wins over the ``model`` param). The query encoder is separate from the one
that encoded the documents (ADORE trains only the query side). Output: run.parquet and run.trec (tag 'dense'), the
same format as `bm25`; summary.json with timings.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from stages.cli import run_stage
from stages.errors import ConfigError
from stages.tables import read_queries, run_from_topk, write_run

VERSION = 1
log = logging.getLogger("stages.retrieve")


@dataclass
class RetrieveParams:
    split: str = "test"
    """Which split's queries to run."""
    top_k: int = 1000
    query_max_length: int = 64
    """Query truncation in tokens."""
    batch_size: int = 128
    model: str = "bundled"
    """Query encoder when there is no ``model`` input: 'bundled' (all-MiniLM-L6-v2) or a local model folder."""
    pooling: str = "auto"
    """mean, cls, or 'auto' (the model's own; see stages.models)."""
    normalize: str = "auto"
    """true, false, or 'auto' (the model's own)."""
    backend: str = "auto"
    """Search backend: auto, faiss, faiss-gpu or torch (see stages.search)."""


def retrieve(params: RetrieveParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    import torch

    from stages.models import load_encoder, model_spec
    from stages.search import searcher_for

    if params.top_k < 1:
        raise ConfigError(f"top_k={params.top_k}", fix="top_k must be >= 1")
    queries = read_queries(inputs["prepared"], params.split)
    spec = model_spec(params.model, inputs)
    encoder = load_encoder(spec, pooling=params.pooling, normalize=params.normalize)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)

    began = time.perf_counter()
    embeddings = encoder.encode(
        queries["text"].tolist(),
        params.query_max_length,
        batch_size=params.batch_size,
        autocast=encoder.for_inference(),
        desc="encode queries",
    )
    encode_seconds = time.perf_counter() - began

    searcher = searcher_for(inputs["index"], params.backend)
    if searcher.dim != embeddings.shape[1]:
        raise ConfigError(
            f"the query encoder gives {embeddings.shape[1]}-dim vectors but the index holds {searcher.dim}-dim ones",
            path=inputs["index"],
            fix="use a query encoder that matches the document encoder of the index",
        )
    k = min(params.top_k, searcher.ntotal)
    began = time.perf_counter()
    scores, indices = searcher.search(embeddings, k)
    search_seconds = time.perf_counter() - began

    run = run_from_topk(queries["query_id"].tolist(), np.asarray(searcher.doc_ids, dtype=object), indices, scores)
    write_run(run, out_dir, tag="dense")
    log.info(
        "retrieve: %d queries of split %s, top %d; encode %.1f s, search %.2f s",
        len(queries),
        params.split,
        k,
        encode_seconds,
        search_seconds,
    )
    return {
        "items": {"queries": len(queries)},
        "queries": len(queries),
        "top_k": k,
        "rows": len(run),
        "model": spec,
        "device": str(device),
        "searcher": type(searcher).__name__,
        "encode_seconds": round(encode_seconds, 3),
        "search_seconds": round(search_seconds, 3),
        "queries_per_s": round(len(queries) / (encode_seconds + search_seconds), 1),
    }


def main(argv: list[str] | None = None) -> int:
    return run_stage("retrieve", RetrieveParams, retrieve, argv)


if __name__ == "__main__":
    sys.exit(main())
