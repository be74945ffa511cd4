"""Stage `train_star`: STAR (Zhan et al., SIGIR 2021) and its baselines, as options of one trainer.

One encoder with shared weights embeds queries and documents. Each step takes ``batch_size`` training queries, one
positive each (drawn among its judged positives) and ``hard_negatives_per_query`` negatives each, and scores every
query against every document of the batch: ``score = q . d / temperature``.

Loss terms, over (query, negative) pairs; documents judged relevant to the query never count as its negatives:

- hard: the query with its own negatives;
- random: the query with every other document of the batch (other queries' positives and negatives); this is
  STAR's cheap source of random negatives (in-batch sharing, no extra encoding).

Each pair costs the pairwise logistic (RankNet) loss of the paper's code, ``softplus(s_neg - s_pos) =
-log sigmoid(s_pos - s_neg)`` (there: log-softmax over the two scores). ``random_weight < 0`` combines the terms as
the paper's code does: the mean over all pairs of both terms; otherwise ``hard mean + random_weight * random mean``.
``loss = "softmax"`` is the listwise alternative (cross-entropy of the positive against the negatives, as
sentence-transformers' MultipleNegativesRankingLoss).

Modes (``negatives``): ``star`` = static hard negatives (input ``negatives``) + random; ``static`` = the hard term
only; ``inbatch`` (Inbatch-Neg) = no extra negatives, the random term over the other queries' positives; ``randneg``
(Rand-Neg) = negatives drawn uniformly from the corpus, + random (the paper's code scores Rand-Neg only against the
batch's random documents, not against other queries' positives).

Several processes (torchrun, see `stages.distributed`): each rank encodes its slice of the global batch's queries
with their positives and negatives; the document embeddings of all ranks are gathered (gradients flow back to the rank
that encoded them), so each query still meets every document of the global batch, with the same masks. A rank's loss
is its share of the global loss: its pairs' (or queries') losses over the global count.

Why a temperature: STAR scores with the plain inner product of un-normalised RoBERTa embeddings. A normalising model
(MiniLM) gives cosines in [-1, 1], so score differences stay below 2 and the logistic loss saturates early with weak
gradients; dividing by 0.05 (sentence-transformers' default scale 20) restores a useful range. Use temperature 1 for
the plain inner product.

Inputs: ``prepared`` (train split), ``negatives`` (a mine_negatives artifact; star and static), optional ``init`` (an
artifact with model/, e.g. the warm-up model, which the paper initialises STAR from; otherwise ``model``).
Outputs: model/, train_log.parquet, loss.png, summary.json.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from stages import distributed
from stages.errors import ConfigError, DataError
from stages.mine_negatives import read_negatives
from stages.tables import read_corpus, read_qrels, read_queries
from stages.training import (
    InitialEncoder,
    TrainConfig,
    batch_rng,
    epoch_order,
    pick_device,
    seed_everything,
    train,
)

VERSION = 1
log = logging.getLogger("stages.train_star")

TRAIN_SPLIT = "train"
MODES = {
    # mode: (negatives per query come from, hard term, random term)
    "star": ("mined", True, True),
    "static": ("mined", True, False),
    "inbatch": (None, False, True),
    "randneg": ("corpus", True, True),
}
LOSSES = ("pairwise", "softmax")


@dataclass
class StarParams(InitialEncoder, TrainConfig):
    negatives: str = "star"
    """star (static hard + random in-batch), static (hard only), inbatch (Inbatch-Neg), randneg (Rand-Neg)."""
    hard_negatives_per_query: int = 1
    """Negatives sampled per query per step, from its mined list (star, static) or the corpus (randneg) (paper: 1)."""
    random_weight: float = -1.0
    """-1 = the paper code's combination (mean over all pairs of both terms); else hard + random_weight * random."""
    loss: str = "pairwise"
    """pairwise = softplus(s_neg - s_pos) per pair (paper); softmax = cross-entropy of the positive vs the negatives."""
    temperature: float = 0.05
    """score = dot product / temperature; 1 = STAR's plain inner product (see the module docstring)."""


@dataclass
class TrainingData:
    """Training queries with their positives and (mined) negatives, and the corpus texts."""

    query_texts: list[str]
    positives: list[list[str]]
    judged: list[set[str]]
    mined: list[list[str]] | None
    doc_text: dict[str, str]
    doc_ids: np.ndarray


@dataclass
class Batch:
    queries: list[int]
    """Rows of TrainingData."""
    doc_ids: list[str]
    """The positives of the queries in order, then each query's negatives in turn."""


def check_params(params: StarParams, inputs: Mapping[str, Path]) -> None:
    if params.negatives not in MODES:
        raise ConfigError(f"unknown negatives mode {params.negatives!r}", fix=f"use one of {sorted(MODES)}")
    if params.loss not in LOSSES:
        raise ConfigError(f"unknown loss {params.loss!r}", fix=f"use one of {list(LOSSES)}")
    if MODES[params.negatives][0] == "mined" and "negatives" not in inputs:
        raise ConfigError(f"mode {params.negatives!r} needs a 'negatives' input (a mine_negatives artifact)")
    if MODES[params.negatives][0] is not None and params.hard_negatives_per_query < 1:
        raise ConfigError(f"mode {params.negatives!r} needs hard_negatives_per_query >= 1")
    if params.temperature <= 0 or params.batch_size < 1:
        raise ConfigError("temperature must be > 0 and batch_size >= 1")


def load_training_data(params: StarParams, inputs: Mapping[str, Path]) -> TrainingData:
    from stages.models import document_texts

    prepared = inputs["prepared"]
    corpus = read_corpus(prepared)
    queries = read_queries(prepared, TRAIN_SPLIT)
    qrels = read_qrels(prepared, TRAIN_SPLIT)
    positives = qrels[qrels["relevance"] >= 1].groupby("query_id")["doc_id"].agg(sorted).to_dict()
    mined = read_negatives(inputs["negatives"]) if MODES[params.negatives][0] == "mined" else None
    keep = [q for q in queries["query_id"] if q in positives and (mined is None or mined.get(q))]
    if len(keep) < len(queries):
        log.warning(
            "%d of %d train queries skipped: no judged positive%s",
            len(queries) - len(keep),
            len(queries),
            " or no mined negative" if mined is not None else "",
        )
    if not keep:
        raise DataError("no train query has a positive (and mined negatives)", path=prepared)
    doc_text = dict(zip(corpus["doc_id"], document_texts(corpus)))
    if mined is not None:
        unknown = sorted({d for q in keep for d in mined[q]} - doc_text.keys())
        if unknown:
            raise DataError(
                f"{len(unknown)} negatives are not in the corpus, e.g. {unknown[:3]}",
                path=inputs["negatives"],
                fix="mine negatives from a run over the same prepared dataset",
            )
    text = dict(zip(queries["query_id"], queries["text"]))
    return TrainingData(
        query_texts=[text[q] for q in keep],
        positives=[positives[q] for q in keep],
        judged=[set(positives[q]) for q in keep],
        mined=[mined[q] for q in keep] if mined is not None else None,
        doc_text=doc_text,
        doc_ids=corpus["doc_id"].to_numpy(),
    )


def negatives_per_query(params: StarParams) -> int:
    return params.hard_negatives_per_query if MODES[params.negatives][0] is not None else 0


def sample_batch(data: TrainingData, params: StarParams, epoch: int, batch: int) -> Batch:
    """The queries, positives and negatives of one step: a function of (seed, epoch, batch) only."""
    size = min(params.batch_size, len(data.query_texts))
    chosen = epoch_order(len(data.query_texts), params.seed, epoch)[batch * size : (batch + 1) * size].tolist()
    rng = batch_rng(params.seed, epoch, batch)
    source, count = MODES[params.negatives][0], negatives_per_query(params)
    positives = [data.positives[q][rng.integers(len(data.positives[q]))] for q in chosen]
    negatives: list[str] = []
    for q in chosen:
        if source == "mined":
            pool = data.mined[q]
            negatives += [pool[i] for i in rng.choice(len(pool), count, replace=len(pool) < count)]
        elif source == "corpus":
            negatives += random_documents(data.doc_ids, data.judged[q], count, rng)
    return Batch(queries=chosen, doc_ids=positives + negatives)


def random_documents(doc_ids: np.ndarray, judged: set[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` documents drawn uniformly from the corpus, none judged relevant."""
    if len(judged) >= len(doc_ids):
        raise DataError("every corpus document is judged relevant to a query; no random negatives to draw")
    drawn: list[str] = []
    while len(drawn) < count:
        doc = str(doc_ids[rng.integers(len(doc_ids))])
        if doc not in judged:
            drawn.append(doc)
    return drawn


def pair_masks(
    judged: list[set[str]], doc_ids: list[str], per_query: int, hard_term: bool, random_term: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (queries, documents) masks of the hard and random pairs for the batch layout of `Batch.doc_ids`.

    Column i < B is query i's positive; columns B + i*k ... B + i*k + k - 1 are query i's negatives. Hard pairs: a query
    and its own negatives; random pairs: a query and every other column except its positive. Documents judged relevant
    to the query (its positives, wherever they appear in the batch) are in neither.
    """
    count = len(judged)
    owner = np.concatenate([np.arange(count), np.repeat(np.arange(count), per_query)])
    if len(owner) != len(doc_ids):
        raise ValueError(f"{len(doc_ids)} documents for {count} queries with {per_query} negatives each")
    own = owner[None, :] == np.arange(count)[:, None]
    negative = (np.arange(len(doc_ids)) >= count)[None, :]
    relevant = np.array([[doc in positives for doc in doc_ids] for positives in judged], dtype=bool)
    hard = own & negative & ~relevant & hard_term
    random = ~own & ~relevant & random_term
    return hard, random


def _share(values: torch.Tensor, count: int) -> torch.Tensor:
    """Sum over ``count`` (a mean when ``values`` are all of them); 0 (still part of the graph) when there are none."""
    return values.sum() / max(1, count)


def _listwise(scores: torch.Tensor, positive: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per query with any negative in ``mask``: -log softmax of the positive among the positive and those negatives."""
    negatives = scores.masked_fill(~mask, float("-inf"))
    per_query = torch.logsumexp(torch.cat([positive, negatives], dim=1), dim=1) - positive.squeeze(1)
    return per_query[mask.any(dim=1)]


def star_loss(
    scores: torch.Tensor,
    positive_column: torch.Tensor,
    hard_mask: torch.Tensor,
    random_mask: torch.Tensor,
    random_weight: float = -1.0,
    loss: str = "pairwise",
    rows: slice = slice(None),
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of (queries, documents) ``scores`` and the per-term values to log (nan for an empty term).

    ``positive_column[i]`` is the column of query i's positive. Pairwise: each (query, negative) pair costs
    softplus(s_neg - s_pos); ``random_weight < 0`` takes the mean over all pairs of both terms, otherwise
    mean(hard) + random_weight * mean(random). Softmax: the same with per-query cross-entropy in place of pairs.

    ``scores`` may hold only ``rows`` of the batch's queries (one rank's; the masks still cover the whole batch):
    the loss and the extras are then their share; the shares of all rows sum to the whole batch's values.
    """
    positive = scores.gather(1, positive_column[:, None])
    hard_rows, random_rows = hard_mask[rows], random_mask[rows]
    if loss == "pairwise":
        pairs = F.softplus(scores - positive)
        hard, random = pairs[hard_rows], pairs[random_rows]
        combined = torch.cat([hard, random])
        counts = {"hard": int(hard_mask.sum()), "random": int(random_mask.sum())}
        counts["combined"] = counts["hard"] + counts["random"]  # the masks are disjoint
    else:
        hard, random = _listwise(scores, positive, hard_rows), _listwise(scores, positive, random_rows)
        combined = _listwise(scores, positive, hard_rows | random_rows)
        masks = {"hard": hard_mask, "random": random_mask, "combined": hard_mask | random_mask}
        counts = {name: int(mask.any(dim=1).sum()) for name, mask in masks.items()}  # queries with negatives
    if random_weight < 0:
        total = _share(combined, counts["combined"])
    else:
        total = _share(hard, counts["hard"]) + random_weight * _share(random, counts["random"])
    extras = {
        f"{term}_loss": float(_share(values.detach(), counts[term])) if counts[term] else float("nan")
        for term, values in (("hard", hard), ("random", random))
    }
    return total, extras


def rank_part(batch: Batch, rows: slice, per_query: int) -> Batch:
    """The queries ``rows`` of the batch with their positives, then their negatives (the layout of `Batch.doc_ids`)."""
    count = len(batch.queries)
    negatives = batch.doc_ids[count + rows.start * per_query : count + rows.stop * per_query]
    return Batch(queries=batch.queries[rows], doc_ids=batch.doc_ids[rows] + negatives)


def gathered_columns(parts: list[slice], per_query: int) -> np.ndarray:
    """For each column of the batch layout, its row among the documents gathered from the ranks' `rank_part`s."""
    # rank part [a, b) starts at row a * (1 + k): positive i at i + a * k, negative j of query i at b + i * k + j
    positives, negatives = [], []
    for part in parts:
        for i in range(part.start, part.stop):
            positives.append(i + part.start * per_query)
            negatives += [part.stop + i * per_query + j for j in range(per_query)]
    return np.array(positives + negatives, dtype=np.int64)


def batch_loss(
    encoder: torch.nn.Module, data: TrainingData, params: StarParams, batch: Batch, device: torch.device
) -> tuple[torch.Tensor, dict[str, float]]:
    """Encode the batch's queries and documents with the one encoder and return `star_loss` of their scores.

    Several processes: this rank's queries against the documents of all ranks; its share of the loss, the extras of
    the whole batch (see the module docstring)."""
    _, hard_term, random_term = MODES[params.negatives]
    per_query = negatives_per_query(params)
    judged = [data.judged[q] for q in batch.queries]
    hard, random = pair_masks(judged, batch.doc_ids, per_query, hard_term, random_term)
    rows = distributed.local_slice(len(batch.queries))
    part = rank_part(batch, rows, per_query)
    tokenize = distributed.unwrap(encoder).tokenize
    queries = tokenize([data.query_texts[q] for q in part.queries], params.query_max_length)
    docs = tokenize([data.doc_text[d] for d in part.doc_ids], params.doc_max_length)
    query_embeddings = encoder(queries["input_ids"].to(device), queries["attention_mask"].to(device))
    doc_embeddings = encoder(docs["input_ids"].to(device), docs["attention_mask"].to(device))
    if distributed.active():
        columns = gathered_columns(distributed.rank_slices(len(batch.queries)), per_query)
        doc_embeddings = distributed.all_gather_rows(doc_embeddings)[torch.from_numpy(columns).to(device)]
    scores = query_embeddings.float() @ doc_embeddings.float().T / params.temperature
    loss, extras = star_loss(
        scores,
        torch.arange(rows.start, rows.stop, device=device),
        torch.from_numpy(hard).to(device),
        torch.from_numpy(random).to(device),
        params.random_weight,
        params.loss,
        rows,
    )
    terms = [name for name, used in (("hard_loss", hard_term), ("random_loss", random_term)) if used]
    return loss, dict(zip(terms, distributed.all_sum([extras[name] for name in terms])))


def train_star(params: StarParams, inputs: Mapping[str, Path], out_dir: Path, work_dir: Path | None = None) -> dict:
    from stages.models import MODEL_SUBDIR, load_encoder

    check_params(params, inputs)
    source = MODES[params.negatives][0]
    if "negatives" in inputs and source != "mined":
        log.info("mode %s ignores the 'negatives' input", params.negatives)
    data = load_training_data(params, inputs)
    seed_everything(params.seed)
    init = Path(inputs["init"]) / MODEL_SUBDIR if "init" in inputs else params.model
    log.info("initialising from %s", init)
    encoder = load_encoder(init, pooling=params.pooling, normalize=params.normalize)
    device = pick_device()
    encoder.to(device)
    size = min(params.batch_size, len(data.query_texts))
    distributed.rank_slices(size)  # fails early if the batch is smaller than the number of processes
    steps_per_epoch = max(1, len(data.query_texts) // size)

    def step_loss(model: torch.nn.Module, epoch: int, batch: int) -> tuple[torch.Tensor, dict[str, float]]:
        return batch_loss(model, data, params, sample_batch(data, params, epoch, batch), device)

    log.info(
        "%s: %d train queries, %d per step, %d steps per epoch, %d negatives per query",
        params.negatives,
        len(data.query_texts),
        size,
        steps_per_epoch,
        negatives_per_query(params),
    )
    summary: dict[str, Any] = train(
        encoder, params, steps_per_epoch, step_loss, out_dir, work_dir, queries_per_step=size
    )
    items = {"queries": summary["steps"] * size, "steps": summary["steps"]}
    head = {"mode": params.negatives, "train_queries": len(data.query_texts), "init": str(init), "items": items}
    return {**head, **summary}


def main(argv: list[str] | None = None) -> int:
    return distributed.run_stage("train_star", StarParams, train_star, argv)


if __name__ == "__main__":
    sys.exit(main())
