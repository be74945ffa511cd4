"""Stage `train_adore`: ADORE (Zhan et al., SIGIR 2021): train the query encoder against a fixed document index with
the negatives the current query encoder retrieves, and a pairwise loss weighted by what each pair costs the ranking.

The document embeddings are frozen (they are the index); only the query encoder, initialised from ``init`` (e.g. the
STAR model that encoded the documents), learns. Each step:

1. encode a batch of training queries, with gradient;
2. search the index with them under no_grad: the top ``top_k`` rows (the paper: 200) are the dynamic hard
   negatives. The search ranks by what the index holds: exact inner products for a flat index, PQ scores
   (asymmetric, through the OPQ rotation if any) for a PQ index;
3. score every retrieved document and every judged positive of the query, ``score = q . d / temperature``, with
   gradient through the query side only;
4. loss: RankNet over (positive, negative) pairs, ``softplus(s_neg - s_pos)``, each pair weighted by |delta metric|,
   the change of the query's metric if the two swapped places in the current ranking (LambdaLoss).

The current ranking is the search order of step 2 (ranks 1..top_k); negatives are the retrieved documents not judged
relevant (relevance < 1). A judged positive outside the top-k has a rank beyond top_k; since ``metric_cutoff <=
top_k`` (checked), its own gain is 0 in either metric, so where exactly beyond top_k it sits never matters: swapping
it with the negative at rank r is worth what the positive would gain by entering at r (and what the query's other
positives lose, for MRR). Every judged positive takes part, retrieved or not, so a positive that fell out of the
top-k still pulls. The paper's code appends the positives only when none was retrieved, and otherwise drops the
unretrieved ones.

Metrics (``metric``, cut at ``metric_cutoff``; the paper's code: MRR with cut 200 for passages):

- ``mrr``: the reciprocal rank of the first positive, 0 beyond the cutoff. With f the first positive's rank and f2 the
  second's, swapping positive p with the negative at rank r changes it by 1/r - 1/f when r < f (p becomes first),
  by 1/f - 1/min(r, f2) when p is the first positive and r > f, else not at all. With one positive per query
  (nearly all of MS MARCO) this is |1/r_p - 1/r|, the weight of the paper's code; with several positives that code
  sums the reciprocal ranks of all of them, while this is MRR's own delta.
- ``ndcg``: nDCG with linear gain (the relevance grade, as trec_eval) and discount 1/log2(1 + rank), 0 beyond the
  cutoff, over the ideal DCG of the query's judged positives: |delta| = gain_p * |disc(r_p) - disc(r)| / IDCG.

Pairs of two positives are not used. Normalisation as in the paper's code: per query, the sum of the weighted pair
losses over the number of (positive, negative) pairs, then the mean over the batch's queries. The weights are not
normalised away (no division by their sum), so a query whose ranking is already good, with small deltas, contributes
less, which is the point of LambdaLoss. (As we read the released adore/train.py, it applies the logistic loss to both
orientations of each pair, one of them with the positive's score first; this follows RankNet as the paper states it.)

Why a temperature: as for `train_star`, a normalising model (MiniLM) gives cosines in [-1, 1], where the logistic loss
saturates early with weak gradients; dividing by 0.05 restores a useful range. Use 1 for a plain inner product model
(the paper's RoBERTa).

PQ indexes (``pq_scoring``): the search always runs over the codes; the loss scores with ``reconstructed`` vectors
(the decoded centroids, with the query through the OPQ rotation: exactly the scores inference ranks by) or
``uncompressed`` ones (the original embeddings from the ``shard_*`` inputs, what the paper's code did).

Several processes (torchrun, see `stages.distributed`): each rank holds its own copy of the index on its device and
takes its slice of the global batch's queries; its loss is its share of the global loss (the sum of its queries'
losses over the global batch size); the documents are frozen, so nothing else crosses ranks but the logged values.

Inputs: ``prepared`` (train split queries and qrels), ``index`` (an `index` artifact, flat or PQ), optional ``init``
(an artifact with model/; otherwise ``model``), optional ``shard_0`` .. ``shard_<n-1>`` (the `encode` artifacts the
index was built from; only for a PQ index with ``pq_scoring: uncompressed``). Search and scoring run in torch on the
training device (`stages.search`: the flat matrix, or the PQ codes, resident on the GPU).
Outputs: model/ (the query encoder; evaluate with `retrieve`, inputs index = the same index, model = this artifact),
train_log.parquet (per step also train_mrr, train_recall and the encode / search / loss+backward seconds), loss.png,
summary.json.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from stages import distributed
from stages.errors import ArtifactError, ConfigError, DataError
from stages.tables import read_qrels, read_queries, write_table
from stages.training import (
    TRAIN_LOG,
    InitialEncoder,
    TrainConfig,
    epoch_order,
    pick_device,
    seed_everything,
    train,
)

VERSION = 1
log = logging.getLogger("stages.train_adore")

TRAIN_SPLIT = "train"
METRICS = ("mrr", "ndcg")
PQ_SCORING = ("reconstructed", "uncompressed")
SHARD_INPUT = re.compile(r"shard_\d+")


@dataclass
class AdoreParams(InitialEncoder, TrainConfig):
    top_k: int = 200
    """Documents retrieved per query and step: the dynamic hard negatives (paper: 200)."""
    metric: str = "mrr"
    """Whose change weighs each pair: mrr or ndcg (paper code: MRR)."""
    metric_cutoff: int = 200
    """The metric's cutoff; at most top_k (paper code: 200 for passages)."""
    temperature: float = 0.05
    """score = dot product / temperature; 1 = the paper's plain inner product (see the module docstring)."""
    pq_scoring: str = "reconstructed"
    """PQ index: score with the reconstructed vectors, or the uncompressed ones (shard inputs; the paper's code)."""


@dataclass
class TrainingData:
    """Training queries with the index rows and relevance grades of their judged positives."""

    query_texts: list[str]
    positive_rows: list[np.ndarray]
    positive_gains: list[np.ndarray]


@dataclass
class Pairs:
    """One batch's retrieval as arrays: the retrieved rows and the positives with their ranks."""

    retrieved: np.ndarray
    """(B, k) index rows in search order (rank = column + 1)."""
    negative: np.ndarray
    """(B, k) whether the retrieved document is not judged relevant."""
    positive_rows: np.ndarray
    """(B, P) index rows of the judged positives (padded with 0)."""
    positive_gains: np.ndarray
    """(B, P) their relevance grades (0 where padded)."""
    positive_ranks: np.ndarray
    """(B, P) their ranks: column + 1 of the retrieved list, else top_k + 1 + their position (padding: inf)."""
    valid: np.ndarray
    """(B, P) which positive slots are real."""


class FrozenDocuments:
    """The fixed document side: the searcher over the index and the vectors the loss scores with."""

    def __init__(self, searcher: Any, scoring: str, uncompressed: torch.Tensor | None = None):
        self.searcher = searcher
        self.scoring = scoring
        """flat (the index's vectors), reconstructed (decoded PQ) or uncompressed (the encode shards)."""
        self.uncompressed = uncompressed

    @property
    def ntotal(self) -> int:
        return self.searcher.ntotal

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) int64 rows of the top-k documents; no gradient."""
        with torch.no_grad():
            return self.searcher.topk(queries.detach(), k)[1]

    def scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, n) float32 inner products of query b with the documents ``rows[b]``; gradient flows to the queries."""
        if self.scoring == "reconstructed":
            queries, vectors = self.searcher.transform_queries(queries), self.searcher.decode(rows)
        elif self.scoring == "uncompressed":
            vectors = self.uncompressed[rows].float()
        else:
            vectors = self.searcher.matrix[rows].float()
        return torch.einsum("bd,bnd->bn", queries.float(), vectors)


def check_params(params: AdoreParams) -> None:
    if params.metric not in METRICS:
        raise ConfigError(f"unknown metric {params.metric!r}", fix=f"use one of {list(METRICS)}")
    if params.pq_scoring not in PQ_SCORING:
        raise ConfigError(f"unknown pq_scoring {params.pq_scoring!r}", fix=f"use one of {list(PQ_SCORING)}")
    if params.top_k < 1 or not 1 <= params.metric_cutoff <= params.top_k:
        raise ConfigError(
            f"top_k={params.top_k}, metric_cutoff={params.metric_cutoff}",
            fix="need 1 <= metric_cutoff <= top_k: ranks beyond top_k are unknown",
        )
    if params.temperature <= 0 or params.batch_size < 1:
        raise ConfigError("temperature must be > 0 and batch_size >= 1")


def load_training_data(prepared: Path, doc_ids: list[str]) -> TrainingData:
    """The train queries with a judged positive (relevance >= 1) that the index holds."""
    queries = read_queries(prepared, TRAIN_SPLIT)
    qrels = read_qrels(prepared, TRAIN_SPLIT)
    qrels = qrels[qrels["relevance"] >= 1]
    row_of = pd.Series(np.arange(len(doc_ids)), index=pd.Index(doc_ids))
    known = qrels["doc_id"].isin(row_of.index)
    if (~known).any():
        if not known.any():
            raise DataError(
                "none of the judged positives is in the index", path=prepared, fix="index the prepared corpus"
            )
        log.warning("%d of %d judged positives are not in the index; skipped", int((~known).sum()), len(qrels))
    qrels = qrels[known].assign(row=lambda frame: row_of.loc[frame["doc_id"]].to_numpy())
    grouped = {q: group for q, group in qrels.groupby("query_id", sort=False)}
    keep = [(q, text) for q, text in zip(queries["query_id"], queries["text"]) if q in grouped]
    if len(keep) < len(queries):
        log.warning("%d of %d train queries skipped: no judged positive", len(queries) - len(keep), len(queries))
    if not keep:
        raise DataError("no train query has a judged positive in the index", path=prepared)
    return TrainingData(
        query_texts=[text for _, text in keep],
        positive_rows=[grouped[q]["row"].to_numpy(np.int64) for q, _ in keep],
        positive_gains=[grouped[q]["relevance"].to_numpy(np.float64) for q, _ in keep],
    )


def batch_queries(count: int, params: AdoreParams, epoch: int, batch: int) -> list[int]:
    """The training queries of one step: a function of (seed, epoch, batch) only."""
    size = min(params.batch_size, count)
    return epoch_order(count, params.seed, epoch)[batch * size : (batch + 1) * size].tolist()


def rank_pairs(retrieved: np.ndarray, positive_rows: list[np.ndarray], positive_gains: list[np.ndarray]) -> Pairs:
    """The ranks of each query's positives in its retrieved list (beyond it: top_k + 1 + their position)."""
    count, k = retrieved.shape
    width = max(len(rows) for rows in positive_rows)
    rows = np.zeros((count, width), dtype=np.int64)
    gains = np.zeros((count, width))
    ranks = np.full((count, width), np.inf)
    negative = np.ones((count, k), dtype=bool)
    for query, (positives, grades) in enumerate(zip(positive_rows, positive_gains)):
        rows[query, : len(positives)] = positives
        gains[query, : len(positives)] = grades
        hit = retrieved[query][:, None] == positives[None, :]
        negative[query] = ~hit.any(axis=1)
        found = hit.any(axis=0)
        ranks[query, : len(positives)] = np.where(found, hit.argmax(axis=0) + 1, k + 1 + np.arange(len(positives)))
    return Pairs(retrieved, negative, rows, gains, ranks, np.isfinite(ranks))


def swap_weights(pairs: Pairs, metric: str, cutoff: int) -> np.ndarray:
    """(B, P, k): |delta metric| of swapping positive p with retrieved document n; 0 unless (p, n) is a real
    (positive, negative) pair. See the module docstring for the formulas."""
    k = pairs.retrieved.shape[1]
    rank_n = np.arange(1, k + 1, dtype=np.float64)[None, None, :]
    rank_p = pairs.positive_ranks[:, :, None]
    if metric == "mrr":
        def reciprocal(rank: np.ndarray) -> np.ndarray:
            return np.where(rank <= cutoff, 1.0 / rank, 0.0)

        ordered = np.sort(pairs.positive_ranks, axis=1)
        first = ordered[:, :1, None]
        second = ordered[:, 1:2, None] if ordered.shape[1] > 1 else np.full_like(first, np.inf)
        weights = np.where(
            rank_n < first,
            reciprocal(rank_n) - reciprocal(first),
            np.where(rank_p == first, reciprocal(first) - reciprocal(np.minimum(rank_n, second)), 0.0),
        )
    else:
        def discount(rank: np.ndarray) -> np.ndarray:
            return np.where(rank <= cutoff, 1.0 / np.log2(rank + 1.0), 0.0)

        ideal_gains = -np.sort(-pairs.positive_gains, axis=1)[:, :cutoff]
        ideal = (ideal_gains * discount(np.arange(1.0, ideal_gains.shape[1] + 1))).sum(axis=1)
        gain = pairs.positive_gains[:, :, None]
        weights = gain * np.abs(discount(rank_p) - discount(rank_n)) / np.maximum(ideal, 1e-12)[:, None, None]
    real = pairs.valid[:, :, None] & pairs.negative[:, None, :]
    return np.where(real, np.abs(weights), 0.0)


def lambda_loss(
    retrieved_scores: torch.Tensor,
    positive_scores: torch.Tensor,
    weights: torch.Tensor,
    real: torch.Tensor,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Mean over queries of (sum over real pairs of weight * softplus(s_neg - s_pos)) / (real pairs of the query).

    ``retrieved_scores`` (B, k), ``positive_scores`` (B, P), ``weights`` and ``real`` (B, P, k). With ``batch_size``
    (the global batch, of which these B queries are one rank's part), the sum over the B queries / ``batch_size``."""
    pair_losses = F.softplus(retrieved_scores[:, None, :] - positive_scores[:, :, None])
    per_query = (weights * pair_losses * real).sum(dim=(1, 2)) / real.sum(dim=(1, 2)).clamp(min=1)
    return per_query.mean() if batch_size is None else per_query.sum() / batch_size


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def batch_loss(
    encoder: torch.nn.Module,
    data: TrainingData,
    params: AdoreParams,
    queries: list[int],
    documents: FrozenDocuments,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Encode the queries, retrieve their top-k, and return the LambdaLoss with the values to log.

    Several processes: ``queries`` is the global batch; this rank takes its slice and returns its share of the loss
    (the logged values are the whole batch's; the seconds this rank's)."""
    batch_size = len(queries)
    queries = queries[distributed.local_slice(batch_size)]
    began = _clock(device)
    tokens = distributed.unwrap(encoder).tokenize([data.query_texts[q] for q in queries], params.query_max_length)
    embeddings = encoder(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
    encoded = _clock(device)
    with torch.autocast(device.type, enabled=False):
        retrieved = documents.search(embeddings, min(params.top_k, documents.ntotal))
        searched = _clock(device)
        pairs = rank_pairs(
            retrieved.cpu().numpy(), [data.positive_rows[q] for q in queries], [data.positive_gains[q] for q in queries]
        )
        weights = torch.from_numpy(swap_weights(pairs, params.metric, params.metric_cutoff)).float().to(device)
        real = torch.from_numpy(pairs.valid[:, :, None] & pairs.negative[:, None, :]).to(device)
        retrieved_scores = documents.scores(embeddings, retrieved) / params.temperature
        positive_scores = documents.scores(embeddings, torch.from_numpy(pairs.positive_rows).to(device))
        share = batch_size if distributed.active() else None
        loss = lambda_loss(retrieved_scores, positive_scores / params.temperature, weights, real, share)
    first = pairs.positive_ranks.min(axis=1)
    k = pairs.retrieved.shape[1]
    reciprocal_ranks, hits = distributed.all_sum([np.where(first <= k, 1.0 / first, 0.0).sum(), (first <= k).sum()])
    return loss, {
        "train_mrr": float(reciprocal_ranks / batch_size),
        "train_recall": float(hits / batch_size),
        "encode_seconds": encoded - began,
        "search_seconds": searched - encoded,
    }


def uncompressed_embeddings(inputs: Mapping[str, Path], doc_ids: list[str], device: torch.device) -> torch.Tensor:
    """The shard inputs' embeddings in index row order, on ``device`` (float16 on CUDA, float32 elsewhere)."""
    from stages.index import embedding_dim, shard_files
    from stages.tables import iter_embeddings

    files = shard_files({name: path for name, path in inputs.items() if SHARD_INPUT.fullmatch(name)})
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    matrix = torch.empty((len(doc_ids), embedding_dim(files)), dtype=dtype, device=device)
    row_of: dict[str, int] | None = None
    offset, filled = 0, 0
    for ids, batch in iter_embeddings(files):
        if row_of is None and ids == doc_ids[offset : offset + len(ids)]:
            rows = torch.arange(offset, offset + len(ids))  # the index was built from these shards in this order
        else:
            row_of = row_of or {doc: row for row, doc in enumerate(doc_ids)}
            rows = torch.tensor([row_of.get(doc, -1) for doc in ids])
            rows = rows[rows >= 0]
            batch = batch[[doc in row_of for doc in ids]]
        matrix[rows.to(device)] = torch.tensor(batch, dtype=dtype).to(device)  # a copy: arrow buffers are read-only
        offset, filled = offset + len(ids), filled + len(rows)
    if filled != len(doc_ids):
        raise ArtifactError(
            f"the shard inputs hold embeddings of {filled} of the index's {len(doc_ids)} documents",
            path=files[0].parent,
            fix="pass the encode shards the index was built from",
        )
    return matrix


def frozen_documents(
    params: AdoreParams, inputs: Mapping[str, Path], device: torch.device
) -> tuple[FrozenDocuments, list[str]]:
    """FrozenDocuments over the index input on ``device``, and the index's doc ids."""
    import faiss

    from stages.search import FlatTorchSearcher, PQTorchSearcher, flat_vectors, load_index

    index, doc_ids = load_index(inputs["index"])
    shards = sorted(name for name in inputs if SHARD_INPUT.fullmatch(name))
    if isinstance(index, faiss.IndexFlat):
        if shards:
            log.info("flat index: the shard inputs are not needed and ignored")
        return FrozenDocuments(FlatTorchSearcher(flat_vectors(index), device=device, doc_ids=doc_ids), "flat"), doc_ids
    searcher = PQTorchSearcher.from_faiss(index, doc_ids=doc_ids, device=device)
    if params.pq_scoring == "reconstructed":
        if shards:
            log.info("pq_scoring reconstructed: the shard inputs are ignored")
        return FrozenDocuments(searcher, "reconstructed"), doc_ids
    if not shards:
        raise ConfigError(
            "pq_scoring 'uncompressed' scores with the original document embeddings, but no shard inputs were given",
            path=inputs["index"],
            fix="pass the index's encode artifacts as inputs shard_0 .. shard_<n-1>, or use pq_scoring 'reconstructed'",
        )
    return FrozenDocuments(searcher, "uncompressed", uncompressed_embeddings(inputs, doc_ids, device)), doc_ids


def add_loss_seconds(out_dir: Path) -> pd.DataFrame:
    """Add loss_seconds (the step's loss + backward + optimiser step) to the written log and return it."""
    frame = pd.read_parquet(Path(out_dir) / TRAIN_LOG)
    frame["loss_seconds"] = frame["seconds"] - frame["encode_seconds"] - frame["search_seconds"]
    write_table(frame, Path(out_dir) / TRAIN_LOG)
    return frame


def train_adore(params: AdoreParams, inputs: Mapping[str, Path], out_dir: Path, work_dir: Path | None = None) -> dict:
    from stages.models import MODEL_SUBDIR, load_encoder

    check_params(params)
    device = pick_device()
    documents, doc_ids = frozen_documents(params, inputs, device)
    data = load_training_data(inputs["prepared"], doc_ids)
    seed_everything(params.seed)
    init = Path(inputs["init"]) / MODEL_SUBDIR if "init" in inputs else params.model
    log.info("initialising the query encoder from %s", init)
    encoder = load_encoder(init, pooling=params.pooling, normalize=params.normalize)
    dims = {"index": documents.searcher.dim}
    if documents.uncompressed is not None:
        dims["shard embeddings"] = int(documents.uncompressed.shape[1])
    for what, dim in dims.items():
        if dim != encoder.dim:
            raise ConfigError(
                f"the query encoder gives {encoder.dim}-dim vectors but the {what} holds {dim}-dim ones",
                path=inputs["index"],
                fix="initialise from the encoder that encoded the documents",
            )
    encoder.to(device)
    size = min(params.batch_size, len(data.query_texts))
    distributed.rank_slices(size)  # fails early if the batch is smaller than the number of processes
    steps_per_epoch = max(1, len(data.query_texts) // size)

    def step_loss(model: torch.nn.Module, epoch: int, batch: int) -> tuple[torch.Tensor, dict[str, float]]:
        queries = batch_queries(len(data.query_texts), params, epoch, batch)
        return batch_loss(model, data, params, queries, documents, device)

    log.info(
        "ADORE: %d train queries, %d per step, %d steps per epoch, top %d of %d documents (%s scoring), %s",
        len(data.query_texts),
        size,
        steps_per_epoch,
        min(params.top_k, documents.ntotal),
        documents.ntotal,
        documents.scoring,
        params.metric,
    )
    summary: dict[str, Any] = train(
        encoder, params, steps_per_epoch, step_loss, out_dir, work_dir, queries_per_step=size
    )
    if not distributed.is_main():
        return summary  # only rank 0 wrote the log
    frame = add_loss_seconds(out_dir)
    step = frame[["seconds", "encode_seconds", "search_seconds", "loss_seconds"]].mean()
    return {
        "items": {"queries": summary["steps"] * size, "steps": summary["steps"]},
        "train_queries": len(data.query_texts),
        "init": str(init),
        "documents": documents.ntotal,
        "scoring": documents.scoring,
        "search_kernel": getattr(documents.searcher, "kernel", "matmul"),
        "encode_seconds_mean": round(float(step["encode_seconds"]), 5),
        "search_seconds_mean": round(float(step["search_seconds"]), 5),
        "loss_seconds_mean": round(float(step["loss_seconds"]), 5),
        "search_share": round(float(step["search_seconds"] / step["seconds"]), 4) if step["seconds"] else None,
        "final_train_mrr": float(frame["train_mrr"].tail(max(1, len(frame) // 10)).mean()),
        **summary,
    }


def main(argv: list[str] | None = None) -> int:
    return distributed.run_stage("train_adore", AdoreParams, train_adore, argv)


if __name__ == "__main__":
    sys.exit(main())
