"""Dev evaluation inside training (`stages.ml.watch`): the trainers' ``evaluate`` callbacks.

The dev queries are encoded with the model being trained and searched (ADORE: its frozen index; STAR: a flat index of
the corpus re-encoded with the current model, so each evaluation costs an encoding of the corpus), and the run is
measured as the `score` stage measures it (`stages.score.evaluate`, ir-measures; unanswered queries count 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .core.errors import ConfigError
from .core.tables import qrels_dict, read_corpus, read_qrels, read_queries, read_tokens, run_from_topk
from .ml.search import FlatTorchSearcher
from .ml.watch import DevMeasure
from .score import MEASURES, evaluate
from .tokenize import TOKENS

log = logging.getLogger("stages.dev_eval")

DEV_SPLIT = "dev"
CUTOFFS = {"R@100": 100, "R@1000": 1000, "MAP": 1000}
"""Documents retrieved per dev query for a measure; 10 for the others (nDCG@10, MRR@10)."""


@dataclass
class DevQueries:
    """The dev split's judged queries."""

    query_ids: list[str]
    texts: list[str]
    qrels: pd.DataFrame

    @classmethod
    def read(cls, prepared: Path, measure: str) -> DevQueries:
        if measure not in MEASURES:
            raise ConfigError(f"unknown eval_measure {measure!r}", fix=f"use one of {list(MEASURES)}")
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


def token_rows(ids: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) of a tokens file read whole (`read_tokens`): their ids one after another, tokens per row."""
    bounds = offsets[start : stop + 1]
    return ids[bounds[0] : bounds[-1]], np.diff(bounds)


def measure_run(dev: DevQueries, searcher, doc_ids, embeddings: np.ndarray, measure: str) -> float:
    """The mean of ``measure`` over the dev queries for their top-k under ``searcher``."""
    scores, indices = searcher.search(embeddings, min(CUTOFFS.get(measure, 10), searcher.ntotal))
    run = run_from_topk(dev.query_ids, np.asarray(doc_ids, dtype=object), indices, scores)
    return float(evaluate(run, dev.qrels, [measure], relevance_level=1)["value"].mean())


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
    from .ml.models import TOKENIZE_CHUNK, document_texts

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
        chunks = ((s, *token_rows(ids, offsets, s, s + TOKENIZE_CHUNK)) for s in starts)
        return encoder.encode_tokens(chunks, len(doc_ids), progress=False)[0]

    def dev_measure(encoder: torch.nn.Module) -> float:
        documents = corpus_embeddings(encoder)
        searcher = FlatTorchSearcher(documents, encoder.device)
        return measure_run(dev, searcher, doc_ids, query_embeddings(encoder, dev, query_max_length), measure)

    return dev_measure
