"""Stage `retrieve`: dense retrieval: encode a split's queries and search an `index` artifact.

Inputs: ``prepared`` (queries), ``index`` (an `index` artifact) and optionally ``model`` (a training artifact; its
``model/`` folder is the query encoder and wins over the ``model`` param). The query encoder is separate from the one
that encoded the documents (ADORE trains only the query side). The queries are encoded, searched and written in
batches (`QUERY_BATCH`), so memory does not grow with their number. Output: run.parquet and run.trec (tag 'dense'),
the same format as `bm25`, rows sorted by (query_id, rank); summary.json with timings.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pyarrow as pa
from tqdm.auto import tqdm

from .core.cli import run_stage
from .core.errors import ConfigError
from .ml.encoder_spec import EncoderSpec
from .core.tables import RunWriter, read_queries, run_table_from_topk

VERSION = 1
QUERY_BATCH = 65_536
"""Queries encoded, searched and written at a time."""
BATCH_ROWS = 1 << 24
"""At most about this many run rows a batch (fewer queries a batch for a large top_k)."""
log = logging.getLogger("stages.retrieve")


@dataclass
class RetrieveParams(EncoderSpec):
    """`EncoderSpec`'s fields (the query encoder when there is no ``model`` input), and:"""

    split: str
    """Which split's queries to run."""
    top_k: int
    query_max_length: int
    """Query truncation in tokens."""
    batch_size: int
    backend: str
    """Search backend: auto, faiss, faiss-gpu or torch (see stages.ml.index_kinds.searcher_for)."""


def retrieve(params: RetrieveParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    import torch

    from .ml.models import load_encoder, model_spec
    from .ml.index_kinds import searcher_for

    if params.top_k < 1:
        raise ConfigError(f"top_k={params.top_k}", fix="top_k must be >= 1")
    # in query id order: the run's rows come out sorted by (query_id, rank), as `write_run` sorts them
    queries = read_queries(inputs["prepared"], params.split).sort_values("query_id", kind="stable", ignore_index=True)
    spec = model_spec(params.model, inputs)
    encoder = load_encoder(spec, pooling=params.pooling, normalize=params.normalize)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)
    searcher = searcher_for(inputs["index"], params.backend)
    if searcher.dim != encoder.dim:
        raise ConfigError(
            f"the query encoder gives {encoder.dim}-dim vectors but the index holds {searcher.dim}-dim ones",
            path=inputs["index"],
            fix="use a query encoder that matches the document encoder of the index",
        )
    k = min(params.top_k, searcher.ntotal)
    size = query_batch(k)
    batches = Batches(params, encoder, encoder.for_inference(), searcher, k)
    with RunWriter(out_dir, tag="dense") as writer, tqdm(total=len(queries), desc="retrieve", unit="query") as bar:
        for start in range(0, len(queries), size):
            batch = queries.iloc[start : start + size]
            batches.run(batch["query_id"].tolist(), batch["text"].tolist(), writer)
            bar.update(len(batch))
    seconds = batches.seconds
    log.info(
        "retrieve: %d queries of split %s, top %d, %d a batch; encode %.1f s, search %.2f s, write %.1f s",
        len(queries),
        params.split,
        k,
        size,
        seconds["encode"],
        seconds["search"],
        seconds["write"],
    )
    return {
        "items": {"queries": len(queries)},
        "queries": len(queries),
        "top_k": k,
        "rows": writer.rows,
        "model": spec,
        "device": str(device),
        "searcher": type(searcher).__name__,
        "query_batch": size,
        "encode_seconds": round(seconds["encode"], 3),
        "search_seconds": round(seconds["search"], 3),
        "write_seconds": round(seconds["write"], 3),
        "queries_per_s": round(len(queries) / (seconds["encode"] + seconds["search"]), 1),
    }


def query_batch(k: int) -> int:
    """Queries a batch: QUERY_BATCH, fewer where they would make more than BATCH_ROWS rows; a multiple of the
    encoder's tokenizing chunk when that large (the queries are then encoded in the same chunks as in one batch)."""
    from .ml.models import TOKENIZE_CHUNK

    size = max(1, min(QUERY_BATCH, BATCH_ROWS // k))
    return size - size % TOKENIZE_CHUNK if size >= TOKENIZE_CHUNK else size


class Batches:
    """Encodes, searches and writes batches of queries, adding up the seconds each step takes."""

    def __init__(self, params: RetrieveParams, encoder, autocast: str | None, searcher, k: int):
        self.params, self.encoder, self.autocast, self.searcher, self.k = params, encoder, autocast, searcher, k
        self.doc_ids = pa.array(searcher.doc_ids, pa.string())
        self.seconds = {"encode": 0.0, "search": 0.0, "write": 0.0}

    def run(self, query_ids: list[str], texts: list[str], writer: RunWriter) -> None:
        began = time.perf_counter()
        embeddings = self.encoder.encode(
            texts,
            self.params.query_max_length,
            batch_size=self.params.batch_size,
            autocast=self.autocast,
            desc="encode queries",
        )
        encoded = time.perf_counter()
        scores, indices = self.searcher.search(embeddings, self.k)
        searched = time.perf_counter()
        writer.write(*run_table_from_topk(pa.array(query_ids, pa.string()), self.doc_ids, indices, scores).columns)
        self.seconds["encode"] += encoded - began
        self.seconds["search"] += searched - encoded
        self.seconds["write"] += time.perf_counter() - searched


def main(argv: list[str] | None = None) -> int:
    return run_stage("retrieve", RetrieveParams, retrieve, argv)


if __name__ == "__main__":
    sys.exit(main())
