"""Dev evaluation inside training (`stages.ml.watch`): the trainers' ``evaluate`` callbacks.

The dev queries are encoded with the model being trained and searched (ADORE: its frozen index; STAR: a flat index of
the corpus re-encoded with the current model, so each evaluation costs an encoding of the corpus), and the run is
measured as the `score` stage measures it (`stages.ml.measures.evaluate`; unanswered queries count 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.artifacts import DEV_SPLIT, TOKENS
from ..core.errors import ConfigError
from ..core.tables import qrels_dict, read_corpus, read_qrels, read_queries, read_tokens, run_from_topk, token_slice
from . import measures
from .search import FlatTorchSearcher
from .watch import DevMeasure

log = logging.getLogger("stages.ml.dev_eval")


@dataclass
class DevQueries:
    """The dev split's judged queries."""

    query_ids: list[str]
    texts: list[str]
    qrels: pd.DataFrame

    @classmethod
    def read(cls, prepared: Path, measure: str) -> DevQueries:
        measures.check(measure)
        qrels = read_qrels(prepared, DEV_SPLIT)
        queries = read_queries(prepared, DEV_SPLIT)
        queries = queries[queries["query_id"].isin(qrels_dict(qrels))]
        if queries.empty:
            raise ConfigError(
                "eval_every > 0 needs judged dev queries, and the prepared dataset has none",
                path=prepared,
                fix="set dataset.dev_fraction > 0 (or a dataset with a dev split), or eval_every: 0",
            )
        log.info("dev evaluation: %d judged dev queries, %s", len(queries), measure)
        return cls(queries["query_id"].tolist(), queries["text"].tolist(), qrels)


def measure_run(dev: DevQueries, searcher, doc_ids, embeddings: np.ndarray, measure: str) -> float:
    """The mean of ``measure`` over the dev queries for their top-k under ``searcher``."""
    scores, indices = searcher.search(embeddings, min(measures.depth(measure), searcher.ntotal))
    run = run_from_topk(dev.query_ids, np.asarray(doc_ids, dtype=object), indices, scores)
    return float(measures.evaluate(run, dev.qrels, [measure], relevance_level=1)["value"].mean())


def query_embeddings(encoder, dev: DevQueries, max_length: int) -> np.ndarray:
    return encoder.encode(dev.texts, max_length, progress=False)  # autocast: bf16 on CUDA


def frozen_index_measure(
    prepared: Path, measure: str, searcher, doc_ids: list[str], query_max_length: int
) -> DevMeasure:
    """ADORE: the dev queries encoded by the model, searched in the frozen index ``searcher``."""
    dev = DevQueries.read(prepared, measure)

    def dev_measure(encoder: torch.nn.Module) -> float:
        return measure_run(dev, searcher, doc_ids, query_embeddings(encoder, dev, query_max_length), measure)

    return dev_measure


def reencoded_corpus_measure(
    prepared: Path, measure: str, query_max_length: int, doc_max_length: int, tokens: Path | None = None
) -> DevMeasure:
    """STAR: the corpus re-encoded by the model (a flat index), then the dev queries searched in it. With ``tokens``
    (the corpus's `tokenize` artifact, checked by the trainer) its ids are encoded, never the texts tokenized again."""
    from .models import TOKENIZE_CHUNK, document_texts

    dev = DevQueries.read(prepared, measure)
    if tokens is not None:
        doc_ids, ids, offsets = read_tokens(tokens / TOKENS)
    else:
        corpus = read_corpus(prepared)
        doc_ids, texts = corpus["doc_id"].tolist(), document_texts(corpus)

    def corpus_embeddings(encoder) -> np.ndarray:  # autocast: bf16 on CUDA
        if tokens is None:
            return encoder.encode(texts, doc_max_length, progress=False)
        starts = range(0, len(doc_ids), TOKENIZE_CHUNK)
        chunks = ((s, *token_slice(ids, offsets, s, s + TOKENIZE_CHUNK)) for s in starts)
        return encoder.encode_tokens(chunks, len(doc_ids), progress=False)[0]

    def dev_measure(encoder: torch.nn.Module) -> float:
        documents = corpus_embeddings(encoder)
        searcher = FlatTorchSearcher(documents, encoder.device)
        return measure_run(dev, searcher, doc_ids, query_embeddings(encoder, dev, query_max_length), measure)

    return dev_measure
