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

The loss and its metrics (MRR or nDCG, cut at ``metric_cutoff``) are `stages.ml.lambda_loss`. Every judged
positive takes part, retrieved or not, so a positive that fell out of the top-k still pulls. The paper's code appends
the positives only when none was retrieved, and otherwise drops the unretrieved ones. (As we read the released
adore/train.py, it applies the logistic loss to both orientations of each pair, one of them with the positive's score
first; this follows RankNet as the paper states it.)

Why a temperature: as for `train_star`, a normalising model (MiniLM) gives cosines in [-1, 1], where the logistic loss
saturates early with weak gradients; dividing by 0.05 restores a useful range. Use 1 for a plain inner product model
(the paper's RoBERTa).

The index and the vectors the loss scores with (flat; PQ with ``pq_scoring`` reconstructed or uncompressed) are
`stages.ml.frozen_documents`.

Several processes (torchrun, see `stages.ml.distributed`): each rank holds its own copy of the index on its device and
takes its slice of the global batch's queries; its loss is its share of the global loss (the sum of its queries'
losses over the global batch size); the documents are frozen, so nothing else crosses ranks but the logged values.

A step does not wait for the device (one process), so that the host queues the next step while the device runs this
one: every training query's tokens (right-padded, as `Encoder.tokenize` pads) and judged positives (padded) are
put on the device once, at the start (`ResidentQueries`), a step copies only its queries' indices there and cuts
its slice to its longest query and widest positive list with lengths kept on the host; ranks and weights are
computed on the device (float64 on the CPU, float32 elsewhere; the weights enter the loss as float32 either way),
and the logged values are read later (`Interval`, 0-dim tensors). With several processes the logged rates are
summed over the ranks, which waits.

Inputs: ``prepared`` (train split queries and qrels), ``index`` (an `index` artifact, flat or PQ), optional ``init``
(an artifact with model/; otherwise ``model``), optional ``shard_0`` .. ``shard_<n-1>`` (the `encode` artifacts the
index was built from; only for a PQ index with ``pq_scoring: uncompressed``). Search and scoring run in torch on the
training device (`stages.ml.search`: the flat matrix, or the PQ codes, resident on the GPU).
Outputs: model/ (the query encoder; evaluate with `retrieve`, inputs index = the same index, model = this artifact),
train_log.parquet (per step also train_mrr, train_recall and the encode / search / loss+backward seconds; on CUDA the
encode and search seconds are the device's, between timing events, and loss_seconds the rest of the host's step time,
so only their means add up; with ``eval_every`` > 0 also ``dev_<measure>`` at the evaluated steps, and model/ is the best
model by dev: `stages.ml.dev_eval`), loss.png, summary.json, tensorboard/ (when ``tensorboard`` is installed).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from .core import parquet_io
from .core.artifacts import TRAIN_LOG, TRAIN_SPLIT
from .core.errors import ConfigError, DataError
from .core.tables import read_qrels, read_queries, write_table
from .ml import distributed
from .ml.dev_eval import frozen_index_measure
from .ml.encoder_spec import EncoderSpec
from .ml.frozen_documents import PQ_SCORING, FrozenDocuments, frozen_documents
from .ml.graphed import FixedShapeStep
from .ml.lambda_loss import METRICS, lambda_loss, rank_pairs, swap_weights, weight_dtype
from .ml.timing import Interval, mark
from .ml.training import TrainConfig, batch_shape, epoch_order, initial_encoder, pick_device, train
from .ml.watch import DevEvaluation

VERSION = 1
log = logging.getLogger("stages.train_adore")



@dataclass
class AdoreParams(DevEvaluation, EncoderSpec, TrainConfig):
    top_k: int
    """Documents retrieved per query and step: the dynamic hard negatives (paper: 200)."""
    metric: str
    """Whose change weighs each pair: mrr or ndcg (paper code: MRR)."""
    metric_cutoff: int
    """The metric's cutoff; at most top_k (paper code: 200 for passages)."""
    temperature: float
    """score = dot product / temperature; 1 = the paper's plain inner product (see the module docstring)."""
    pq_scoring: str
    """PQ index: score with the reconstructed vectors, or the uncompressed ones (shard inputs; the paper's code)."""


@dataclass
class TrainingData:
    """Training queries with the index rows and relevance grades of their judged positives, as lists on the host;
    ``resident`` holds them again, with the queries' tokens, on the training device (see `ResidentQueries`)."""

    query_texts: list[str]
    positive_rows: list[np.ndarray]
    positive_gains: list[np.ndarray]
    resident: ResidentQueries | None = field(default=None, repr=False)
    """Built by `train_adore` before training; `batch_loss` builds it on its first call when missing (or made for
    another tokenizer, query_max_length or device)."""


@dataclass
class Positives:
    """Every query's judged positives as padded (queries, P) tensors on one device; P = the most of any query."""

    rows: torch.Tensor
    """(N, P) int64 index rows (0 where padded)."""
    gains: torch.Tensor
    """(N, P) float relevance grades (0 where padded)."""
    valid: torch.Tensor
    """(N, P) bool: which slots are real."""
    counts: np.ndarray
    """(N,) int64 on the host: the positives of each query (to cut a batch to its widest without a sync)."""

    @classmethod
    def pad(
        cls, rows: list[np.ndarray], gains: list[np.ndarray], device: torch.device, dtype: torch.dtype | None = None
    ) -> Positives:
        """From per-query arrays (the order of each query's positives is kept: it decides the rank of an unretrieved
        one); ``dtype`` of the gains: `weight_dtype` by default."""
        counts = np.array([len(r) for r in rows], dtype=np.int64)
        width = int(counts.max(initial=0))
        valid = np.arange(width)[None, :] < counts[:, None]
        padded_rows = np.zeros(valid.shape, dtype=np.int64)
        padded_gains = np.zeros(valid.shape, dtype=np.float64)
        if len(rows):
            padded_rows[valid] = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
            padded_gains[valid] = np.concatenate([np.asarray(g, dtype=np.float64) for g in gains])
        return cls(
            rows=torch.from_numpy(padded_rows).to(device),
            gains=torch.from_numpy(padded_gains).to(device, dtype or weight_dtype(device)),
            valid=torch.from_numpy(valid).to(device),
            counts=counts,
        )

    def take(self, index: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, gains, valid) of the queries ``index`` (a tensor on their device), cut to ``width`` columns."""
        return self.rows[index, :width], self.gains[index, :width], self.valid[index, :width]


@dataclass
class QueryTokens:
    """Every query's token ids, right-padded (with the tokenizer's pad id) to the longest, on one device."""

    ids: torch.Tensor
    """(N, L) int32 token ids."""
    lengths: torch.Tensor
    """(N,) int64 tokens per query (special tokens included), on the device: the attention masks."""
    host_lengths: np.ndarray
    """The same on the host: a batch's longest query without a sync."""

    @classmethod
    def tokenize(
        cls, tokenizer: Any, texts: list[str], max_length: int, device: torch.device, chunk_size: int = 10_000
    ) -> QueryTokens:
        """Tokenize ``texts`` (truncated to ``max_length``, as `Encoder.tokenize` does) in chunks, once."""
        from .ml.models import token_chunk

        pieces = [token_chunk(tokenizer, texts[start : start + chunk_size], max_length)
                  for start in range(0, len(texts), chunk_size)]
        lengths = np.concatenate([n for _, n in pieces]) if pieces else np.zeros(0, dtype=np.int64)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        filled = np.arange(int(lengths.max(initial=0)))[None, :] < lengths[:, None]
        ids = np.full(filled.shape, pad, dtype=np.int32)
        if pieces:
            ids[filled] = np.concatenate([i for i, _ in pieces])
        return cls(torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device), lengths)

    def take(self, index: torch.Tensor, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both (B, longest) int64, of the queries ``index`` (a tensor on the device)."""
        positions = torch.arange(longest, device=self.ids.device)
        return self.ids[index, :longest].long(), (positions[None, :] < self.lengths[index][:, None]).long()


@dataclass
class ResidentQueries:
    """The training queries' tokens and judged positives on the training device, built once, so that a step only
    indexes them with its queries' index tensor."""

    tokens: QueryTokens
    positives: Positives
    tokenizer: Any
    max_length: int
    device: torch.device

    @classmethod
    def build(cls, data: TrainingData, tokenizer: Any, max_length: int, device: torch.device) -> ResidentQueries:
        tokens = QueryTokens.tokenize(tokenizer, data.query_texts, max_length, device)
        positives = Positives.pad(data.positive_rows, data.positive_gains, device)
        return cls(tokens, positives, tokenizer, max_length, device)

    def serves(self, tokenizer: Any, max_length: int, device: torch.device) -> bool:
        return self.tokenizer is tokenizer and self.max_length == max_length and self.device == device


def resident_queries(data: TrainingData, tokenizer: Any, max_length: int, device: torch.device) -> ResidentQueries:
    """``data.resident``, built (and kept there) unless it already serves this tokenizer, max_length and device."""
    if data.resident is None or not data.resident.serves(tokenizer, max_length, device):
        data.resident = ResidentQueries.build(data, tokenizer, max_length, device)
    return data.resident


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


def _to_device(index: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small int64 index array on ``device``; on CUDA through pinned memory, without waiting for the copy."""
    tensor = torch.from_numpy(index)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def batch_loss(
    encoder: torch.nn.Module,
    data: TrainingData,
    params: AdoreParams,
    queries: list[int] | np.ndarray,
    documents: FrozenDocuments,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Encode the queries, retrieve their top-k, and return the LambdaLoss with the values to log.

    Nothing in it waits for the device (one process): the queries' tokens and positives are indexed on the device
    (`ResidentQueries`; built on the first call when ``data.resident`` is missing), the batch's index is the one
    host-to-device copy, and the logged values are lazy: train_mrr and train_recall 0-dim tensors, the seconds
    `Interval` s; ``float()`` reads them. Several processes: ``queries`` is the global batch; this rank takes its slice
    and returns its share of the loss (the logged values are the whole batch's, summed over the ranks at once, as
    floats; the seconds this rank's)."""
    batch_size = len(queries)
    local = np.asarray(queries, dtype=np.int64)[distributed.local_slice(batch_size)]
    resident = resident_queries(data, distributed.unwrap(encoder).tokenizer, params.query_max_length, device)
    widths = (int(resident.tokens.host_lengths[local].max()), int(resident.positives.counts[local].max()))
    marks = [mark(device)]
    share = batch_size if distributed.active() else None
    loss, extras = device_loss(encoder, resident, params, documents, _to_device(local, device), widths, share, marks)
    if distributed.active():  # a sync, as all_sum takes and gives floats
        extras["train_mrr"], extras["train_recall"] = distributed.all_sum(
            [float(extras["train_mrr"]), float(extras["train_recall"])]
        )
    return loss, {
        "train_mrr": extras["train_mrr"] / batch_size,
        "train_recall": extras["train_recall"] / batch_size,
        "encode_seconds": Interval(marks[0], marks[1]),
        "search_seconds": Interval(marks[1], marks[2]),
    }


def device_loss(
    encoder: torch.nn.Module,
    resident: ResidentQueries,
    params: AdoreParams,
    documents: FrozenDocuments,
    index: torch.Tensor,
    widths: tuple[int, int],
    share: int | None = None,
    marks: list | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The device side of a step: the LambdaLoss of the queries ``index`` (on the device) and their summed
    reciprocal ranks and hits. ``widths``: the columns of the queries' tokens and positives to use (the batch's widest,
    or every query's widest for shapes that never change); ``share``: see `lambda_loss`. With ``marks``, the moments
    after the encoding and after the search are appended to it (`mark`)."""
    # padded, not packed: at 32 short queries the packed forward's extra kernels cost more than the padding
    # (H200: 37 vs 26 ms a step, docs/results/train-throughput-h200)
    input_ids, attention_mask = resident.tokens.take(index, widths[0])
    embeddings = encoder(input_ids, attention_mask)
    if marks is not None:
        marks.append(mark(index.device))
    with torch.autocast(index.device.type, enabled=False):
        retrieved = documents.search(embeddings, min(params.top_k, documents.ntotal))
        if marks is not None:
            marks.append(mark(index.device))
        pairs = rank_pairs(retrieved, *resident.positives.take(index, widths[1]))
        weights = swap_weights(pairs, params.metric, params.metric_cutoff).float()
        real = pairs.valid[:, :, None] & pairs.negative[:, None, :]
        retrieved_scores = documents.scores(embeddings, retrieved) / params.temperature
        positive_scores = documents.scores(embeddings, pairs.positive_rows)
        loss = lambda_loss(retrieved_scores, positive_scores / params.temperature, weights, real, share)
    first = pairs.positive_ranks.amin(dim=1)
    found = first <= retrieved.shape[1]
    return loss, {"train_mrr": torch.where(found, 1.0 / first, 0.0).sum(), "train_recall": found.sum().to(first.dtype)}


def fixed_shape_step(
    data: TrainingData, params: AdoreParams, documents: FrozenDocuments, device: torch.device
) -> FixedShapeStep:
    """The same step with the same shapes every time (every query padded to the longest query and the most
    positives of all), for `stages.ml.training.train` to capture in a CUDA graph (`stages.ml.graphed`)."""
    resident = data.resident
    widths = (int(resident.tokens.host_lengths.max()), int(resident.positives.counts.max()))
    size, _ = batch_shape(params.batch_size, len(data.query_texts))

    def loss_at(model: torch.nn.Module, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, sums = device_loss(model, resident, params, documents, index, widths)
        return loss, {name: value / size for name, value in sums.items()}

    def batch_index(epoch: int, batch: int) -> np.ndarray:
        return np.asarray(batch_queries(len(data.query_texts), params, epoch, batch), dtype=np.int64)

    return FixedShapeStep(size, batch_index, loss_at)


def add_loss_seconds(out_dir: Path) -> pd.DataFrame:
    """Add loss_seconds (the step's loss + backward + optimiser step) to the written log and return it; a log of
    replayed CUDA graph steps has no inner clocks and is returned as it is."""
    frame = parquet_io.read_table(Path(out_dir) / TRAIN_LOG).to_pandas()
    if "encode_seconds" in frame:
        frame["loss_seconds"] = frame["seconds"] - frame["encode_seconds"] - frame["search_seconds"]
        write_table(frame, Path(out_dir) / TRAIN_LOG)
    return frame


def finite(value: float, digits: int) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def train_adore(params: AdoreParams, inputs: Mapping[str, Path], out_dir: Path, work_dir: Path | None = None) -> dict:
    check_params(params)
    device = pick_device()
    documents, doc_ids = frozen_documents(params.pq_scoring, inputs, device)
    data = load_training_data(inputs["prepared"], doc_ids)
    encoder, init = initial_encoder(params, inputs, device)
    check_dimensions(encoder.dim, documents, inputs["index"])
    began = time.perf_counter()
    data.resident = ResidentQueries.build(data, encoder.tokenizer, params.query_max_length, device)
    log.info("tokenized the %d train queries in %.1f s", len(data.query_texts), time.perf_counter() - began)
    size, steps_per_epoch = batch_shape(params.batch_size, len(data.query_texts))

    def step_loss(model: torch.nn.Module, epoch: int, batch: int) -> tuple[torch.Tensor, dict[str, Any]]:
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
    evaluate = None
    if params.eval_every > 0:  # cheap: the dev queries searched in the frozen index
        evaluate = frozen_index_measure(
            inputs["prepared"], params.eval_measure, documents.searcher, doc_ids, params.query_max_length
        )
    summary: dict[str, Any] = train(
        encoder, params, steps_per_epoch, step_loss, out_dir, work_dir, queries_per_step=size, evaluate=evaluate,
        fixed_shape=fixed_shape_step(data, params, documents, device),
    )
    if not distributed.is_main():
        return summary  # only rank 0 wrote the log
    head = {"items": {"queries": summary["steps"] * size, "steps": summary["steps"]}, "init": str(init)}
    return {**head, "train_queries": len(data.query_texts), **step_summary(out_dir, documents), **summary}


def check_dimensions(dim: int, documents: FrozenDocuments, index: Path) -> None:
    """The query encoder's vectors have the dimension of the index's (and of the shard embeddings it scores with)."""
    dims = {"index": documents.searcher.dim}
    if documents.uncompressed is not None:
        dims["shard embeddings"] = int(documents.uncompressed.shape[1])
    for what, theirs in dims.items():
        if theirs != dim:
            raise ConfigError(
                f"the query encoder gives {dim}-dim vectors but the {what} holds {theirs}-dim ones",
                path=index,
                fix="initialise from the encoder that encoded the documents",
            )


def step_summary(out_dir: Path, documents: FrozenDocuments) -> dict[str, Any]:
    """The documents searched, and the mean seconds of a step's parts (the log gets its loss_seconds here)."""
    frame = add_loss_seconds(out_dir)
    clocks = ["seconds", "encode_seconds", "search_seconds", "loss_seconds"]
    step = frame.reindex(columns=clocks).mean()  # a CUDA graph's steps have no inner clocks: NaN
    return {
        "documents": documents.ntotal,
        "scoring": documents.scoring,
        "search_kernel": getattr(documents.searcher, "kernel", "matmul"),
        "encode_seconds_mean": finite(step["encode_seconds"], 5),
        "search_seconds_mean": finite(step["search_seconds"], 5),
        "loss_seconds_mean": finite(step["loss_seconds"], 5),
        "search_share": finite(step["search_seconds"] / step["seconds"], 4) if step["seconds"] else None,
        "final_train_mrr": float(frame["train_mrr"].tail(max(1, len(frame) // 10)).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    return distributed.run_stage("train_adore", AdoreParams, train_adore, argv)


if __name__ == "__main__":
    sys.exit(main())
