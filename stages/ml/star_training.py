"""The STAR trainer, shared by the `train_star` and `train_warmup` stages (the warm-up model is this trainer on BM25
negatives): its params, the training data, the sampled batches, and the step (`stages.ml.star_loss` of the scores
of one encoder for queries and documents). See `stages.train_star` for what it trains and why.

The host side of a step (sampling, the pair masks, tokenizing: `prepare_inputs`) is apart from its device side (the
forward passes and the loss: `inputs_loss`); while the device runs one step, a background thread
(`stages.ml.models.prefetched`) already prepares the next two, into pinned memory on CUDA, so the copies do not block.
Nothing of the loss is read back to the host within a step (one process): `star_loss` selects its pairs with indices
made on the host (`loss_index`) and returns its logged terms as 0-dim tensors.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from ..core.artifacts import TOKENS, TRAIN_SPLIT
from ..core.errors import ConfigError, DataError
from ..core.tables import read_corpus, read_negatives, read_qrels, read_queries, read_tokens
from . import distributed
from .dev_eval import reencoded_corpus_measure
from .encoder_spec import EncoderSpec
from .models import TokenCache, check_tokens, prefetched
from .negative_samplers import SAMPLERS, NegativeSampler
from .star_loss import LOSSES, LossIndex, loss_index, map_tensors, pair_masks, star_loss
from .watch import DevEvaluation
from .training import (
    TrainConfig,
    batch_rng,
    batch_shape,
    epoch_order,
    initial_encoder,
    pick_device,
    total_steps,
    train,
)

log = logging.getLogger("stages.ml.star_training")


@dataclass
class StarParams(DevEvaluation, EncoderSpec, TrainConfig):
    negatives: str
    """star (static hard + random in-batch), static (hard only), inbatch (Inbatch-Neg), randneg (Rand-Neg)."""
    hard_negatives_per_query: int
    """Negatives sampled per query per step, from its mined list (star, static) or the corpus (randneg) (paper: 1)."""
    random_weight: float
    """-1 = the paper code's combination (mean over all pairs of both terms); else hard + random_weight * random."""
    loss: str
    """pairwise = softplus(s_neg - s_pos) per pair (paper); softmax = cross-entropy of the positive vs the negatives."""
    temperature: float
    """score = dot product / temperature; 1 = STAR's plain inner product (see `stages.train_star`)."""


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


def sampler_of(params: StarParams) -> NegativeSampler:
    """The negative sampler the params name (`stages.ml.negative_samplers`)."""
    if params.negatives not in SAMPLERS:
        raise ConfigError(f"unknown negatives mode {params.negatives!r}", fix=f"use one of {sorted(SAMPLERS)}")
    return SAMPLERS[params.negatives]


def check_params(params: StarParams, inputs: Mapping[str, Path]) -> None:
    sampler = sampler_of(params)
    if params.loss not in LOSSES:
        raise ConfigError(f"unknown loss {params.loss!r}", fix=f"use one of {list(LOSSES)}")
    if sampler.needs_mined_negatives and "negatives" not in inputs:
        raise ConfigError(f"mode {params.negatives!r} needs a 'negatives' input (a mine_negatives artifact)")
    if sampler.draw is not None and params.hard_negatives_per_query < 1:
        raise ConfigError(f"mode {params.negatives!r} needs hard_negatives_per_query >= 1")
    if params.temperature <= 0 or params.batch_size < 1:
        raise ConfigError("temperature must be > 0 and batch_size >= 1")


def load_training_data(params: StarParams, inputs: Mapping[str, Path]) -> TrainingData:
    from .models import document_texts

    prepared = inputs["prepared"]
    corpus = read_corpus(prepared)
    queries = read_queries(prepared, TRAIN_SPLIT)
    qrels = read_qrels(prepared, TRAIN_SPLIT)
    positives = qrels[qrels["relevance"] >= 1].groupby("query_id")["doc_id"].agg(sorted).to_dict()
    mined = read_negatives(inputs["negatives"]) if sampler_of(params).needs_mined_negatives else None
    keep = [q for q in queries["query_id"] if q in positives and (mined is None or mined.get(q))]
    if len(keep) < len(queries):
        log.warning(
            "%d of %d train queries skipped: no judged positive%s",
            len(queries) - len(keep),
            len(queries),
            " or no mined negative" if mined is not None else "",
        )
    if not keep:
        raise DataError(
            "no train query has a judged positive" + (" and negatives" if mined is not None else ""),
            path=prepared,
            fix="check the train split's judgments; with mine.source: given, the dataset's rows need negative "
            "passages (else set mine.source: bm25 or warmup, or star.negatives: inbatch)",
        )
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
    return params.hard_negatives_per_query if sampler_of(params).draw is not None else 0


def sample_batch(data: TrainingData, params: StarParams, epoch: int, batch: int) -> Batch:
    """The queries, positives and negatives of one step: a function of (seed, epoch, batch) only."""
    size = min(params.batch_size, len(data.query_texts))
    chosen = epoch_order(len(data.query_texts), params.seed, epoch)[batch * size : (batch + 1) * size].tolist()
    rng = batch_rng(params.seed, epoch, batch)
    sampler, count = sampler_of(params), negatives_per_query(params)
    positives = [data.positives[q][rng.integers(len(data.positives[q]))] for q in chosen]
    negatives: list[str] = []
    if sampler.draw is not None:
        for q in chosen:
            negatives += sampler.draw(data, q, count, rng)
    return Batch(queries=chosen, doc_ids=positives + negatives)


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


@dataclass
class StepInputs:
    """The host side of one step (`prepare_inputs`): everything `inputs_loss` needs, as CPU tensors."""

    query_input_ids: torch.Tensor
    query_attention_mask: torch.Tensor
    """This rank's queries, tokenized."""
    doc_input_ids: torch.Tensor
    doc_attention_mask: torch.Tensor
    """This rank's part of the documents (`rank_part`), tokenized."""
    hard_mask: torch.Tensor
    random_mask: torch.Tensor
    """`pair_masks` of the whole batch."""
    positive_columns: torch.Tensor
    """Column of each of this rank's queries' positive."""
    index: LossIndex
    """`loss_index` of the masks for this rank's rows."""
    rows: slice
    """This rank's queries of the batch."""
    gathered_columns: torch.Tensor | None = None
    """Several processes: `gathered_columns` of the batch (rows of the gathered documents in the batch layout)."""
    query_lengths: np.ndarray | None = None
    doc_lengths: np.ndarray | None = None
    """Packed batches (`prepare_inputs` with ``packed``): tokens per text, on the host; the ``*_input_ids`` then
    hold the texts' ids one after another and the attention masks are None (`Encoder.forward_packed`)."""

    def pin_memory(self) -> StepInputs:
        """A copy in pinned (page-locked) memory, so that the copies to a GPU can be asynchronous."""
        return map_tensors(self, torch.Tensor.pin_memory)

    def to(self, device: torch.device, non_blocking: bool = False) -> StepInputs:
        return map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))


def prepare_inputs(
    tokenize: Callable[[list[str], int], dict[str, torch.Tensor]],
    data: TrainingData,
    params: StarParams,
    batch: Batch,
    pin_memory: bool = False,
    packed: bool = False,
) -> StepInputs:
    """The host side of a step on ``batch``: its pair masks, this rank's queries and documents tokenized with
    ``tokenize`` (`Encoder.tokenize`), the loss's index; in pinned memory with ``pin_memory`` (for a GPU); with
    ``packed``, the tokens without their padding (`StepInputs.query_lengths`).
    Reads no device state: it may run on another thread while the device works on an earlier step."""
    sampler, per_query = sampler_of(params), negatives_per_query(params)
    judged = [data.judged[q] for q in batch.queries]
    hard, random = pair_masks(judged, batch.doc_ids, per_query, sampler.hard_term, sampler.random_term)
    rows = distributed.local_slice(len(batch.queries))
    part = rank_part(batch, rows, per_query)
    queries = tokenize([data.query_texts[q] for q in part.queries], params.query_max_length)
    docs = tokenize([data.doc_text[d] for d in part.doc_ids], params.doc_max_length)
    gathered = None
    if distributed.active():
        gathered = torch.from_numpy(gathered_columns(distributed.rank_slices(len(batch.queries)), per_query))
    lengths = {}
    if packed:  # the texts one after another, and their lengths on the host
        lengths = {"query_lengths": queries["attention_mask"].sum(1).numpy(), "doc_lengths": docs["attention_mask"].sum(1).numpy()}
        queries = {"input_ids": queries["input_ids"][queries["attention_mask"].bool()], "attention_mask": None}
        docs = {"input_ids": docs["input_ids"][docs["attention_mask"].bool()], "attention_mask": None}
    inputs = StepInputs(
        query_input_ids=queries["input_ids"],
        query_attention_mask=queries["attention_mask"],
        doc_input_ids=docs["input_ids"],
        doc_attention_mask=docs["attention_mask"],
        **lengths,
        hard_mask=torch.from_numpy(hard),
        random_mask=torch.from_numpy(random),
        positive_columns=torch.arange(rows.start, rows.stop),
        index=loss_index(hard, random, rows, params.loss),
        rows=rows,
        gathered_columns=gathered,
    )
    return inputs.pin_memory() if pin_memory else inputs


def inputs_loss(
    encoder: torch.nn.Module, inputs: StepInputs, params: StarParams, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """The device side of a step: ``inputs`` (`prepare_inputs`) copied to ``device`` (asynchronously from pinned
    memory), the queries and documents encoded with the one encoder, and `star_loss` of their scores.

    Returns the loss and the logged terms; one process: as 0-dim tensors on the device (nothing read back). Several
    processes: this rank's share of the loss, and the terms of the whole batch as floats (summed over the ranks)."""
    sampler = sampler_of(params)
    inputs = inputs.to(device, non_blocking=True)
    if inputs.query_lengths is not None:  # packed: one process (DDP's hooks need its own forward)
        query_embeddings = encoder.forward_packed(inputs.query_input_ids, inputs.query_lengths)
        doc_embeddings = encoder.forward_packed(inputs.doc_input_ids, inputs.doc_lengths)
    else:
        query_embeddings = encoder(inputs.query_input_ids, inputs.query_attention_mask)
        doc_embeddings = encoder(inputs.doc_input_ids, inputs.doc_attention_mask)
    if distributed.active():
        doc_embeddings = distributed.all_gather_rows(doc_embeddings)[inputs.gathered_columns]
    scores = query_embeddings.float() @ doc_embeddings.float().T / params.temperature
    loss, extras = star_loss(
        scores,
        inputs.positive_columns,
        inputs.hard_mask,
        inputs.random_mask,
        params.random_weight,
        params.loss,
        inputs.rows,
        index=inputs.index,
    )
    terms = [name for name, used in (("hard_loss", sampler.hard_term), ("random_loss", sampler.random_term)) if used]
    if distributed.active():
        return loss, dict(zip(terms, distributed.all_sum([float(extras[name]) for name in terms])))
    return loss, {name: extras[name] for name in terms}


def batch_loss(
    encoder: torch.nn.Module, data: TrainingData, params: StarParams, batch: Batch, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """Encode the batch's queries and documents with the one encoder and return `star_loss` of their scores:
    `prepare_inputs` then `inputs_loss`, on this thread.

    Several processes: this rank's queries against the documents of all ranks; its share of the loss, the extras of
    the whole batch (see the module docstring)."""
    tokenize = distributed.unwrap(encoder).tokenize
    inputs = prepare_inputs(tokenize, data, params, batch, pin_memory=device.type == "cuda")
    return inputs_loss(encoder, inputs, params, device)


def host_tokenizer(
    encoder: torch.nn.Module, data: TrainingData, params: StarParams, tokens: Path | None = None
) -> TokenCache:
    """The host side's tokenizer: every text a step can draw tokenized once, before the first step (`TokenCache`):
    the queries, and the corpus read from the ``tokens`` artifact (the `tokenize` stage's, made once for every
    encoding) or else the positives and mined negatives tokenized here (every document for Rand-Neg)."""
    cache = TokenCache(encoder.tokenizer)
    cache.add(data.query_texts, params.query_max_length, desc="tokenize queries")
    if tokens is not None:
        check_tokens(tokens, encoder, params.doc_max_length, len(data.doc_text))
        ids, flat, offsets = read_tokens(tokens / TOKENS)
        added = cache.add_tokenized([data.doc_text[d] for d in ids], flat, offsets, params.doc_max_length)
        log.info("tokenized %d queries; %d distinct documents read from %s", len(data.query_texts), added, tokens)
        return cache
    if sampler_of(params).draws_from_corpus:
        doc_ids = data.doc_ids.tolist()
    else:
        drawn = [d for docs in data.positives for d in docs] + [d for docs in data.mined or [] for d in docs]
        doc_ids = list(dict.fromkeys(drawn))
    added = cache.add((data.doc_text[d] for d in doc_ids), params.doc_max_length, desc="tokenize documents")
    log.info("tokenized %d queries and %d distinct documents for the host side", len(data.query_texts), added)
    return cache


@contextmanager
def step_losses(
    encoder: torch.nn.Module,
    data: TrainingData,
    params: StarParams,
    steps_per_epoch: int,
    device: torch.device,
    tokens: Path | None = None,
) -> Iterator[Callable[[torch.nn.Module, int, int], tuple[torch.Tensor, dict[str, Any]]]]:
    """The per-step closure for `stages.ml.training.train`: the device side of each step, its host side prepared ahead
    on a worker thread (`stages.ml.models.prefetched`; pinned on CUDA, on this rank's device)."""
    pin = device.type == "cuda"
    # padding-free batches where the flash kernel runs (one process: DDP's hooks need its wrapper's own forward)
    packed = not distributed.active() and encoder.supports_packed_training("bf16" if params.bf16 else None)

    def prepare(step: int) -> StepInputs:
        """The host side of global step ``step`` (run ahead on the prefetch thread)."""
        batch = sample_batch(data, params, *divmod(step, steps_per_epoch))
        return prepare_inputs(tokenize, data, params, batch, pin_memory=pin, packed=packed)

    cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) if pin else None

    def on_device() -> None:  # the prefetch thread's CUDA calls (pinning) go to this rank's device
        torch.cuda.set_device(cuda_index)

    end = total_steps(params, steps_per_epoch)
    tokenize = host_tokenizer(distributed.unwrap(encoder), data, params, tokens)
    ahead: Iterator[tuple[int, StepInputs]] | None = None

    def step_loss(model: torch.nn.Module, epoch: int, batch: int) -> tuple[torch.Tensor, dict[str, Any]]:
        nonlocal ahead
        step = epoch * steps_per_epoch + batch
        if ahead is None:  # from the first step asked for: a resumed run starts in the middle
            steps = ((s, prepare(s)) for s in range(step, end))
            ahead = prefetched(steps, 2, "train_star-prefetch", on_device if pin else None)
        prepared, inputs = next(ahead)
        if prepared != step:
            raise RuntimeError(f"the training loop asked for step {step}; the steps prepared ahead are at {prepared}")
        return inputs_loss(model, inputs, params, device)

    try:
        yield step_loss
    finally:
        if ahead is not None:
            ahead.close()  # waits for the steps being prepared: no thread outlives the stage


def train_star(params: StarParams, inputs: Mapping[str, Path], out_dir: Path, work_dir: Path | None = None) -> dict:
    check_params(params, inputs)
    if "negatives" in inputs and not sampler_of(params).needs_mined_negatives:
        log.info("mode %s ignores the 'negatives' input", params.negatives)
    data = load_training_data(params, inputs)
    device = pick_device()
    encoder, init = initial_encoder(params, inputs, device)
    size, steps_per_epoch = batch_shape(params.batch_size, len(data.query_texts))

    log.info(
        "%s: %d train queries, %d per step, %d steps per epoch, %d negatives per query",
        params.negatives,
        len(data.query_texts),
        size,
        steps_per_epoch,
        negatives_per_query(params),
    )
    tokens = Path(inputs["tokens"]) if "tokens" in inputs else None
    evaluate = None
    if params.eval_every > 0:  # each evaluation encodes the corpus
        lengths = (params.query_max_length, params.doc_max_length)
        evaluate = reencoded_corpus_measure(inputs["prepared"], params.eval_measure, *lengths, tokens)
    with step_losses(encoder, data, params, steps_per_epoch, device, tokens) as step_loss:
        summary: dict[str, Any] = train(
            encoder, params, steps_per_epoch, step_loss, out_dir, work_dir, queries_per_step=size, evaluate=evaluate
        )
    items = {"queries": summary["steps"] * size, "steps": summary["steps"]}
    head = {"mode": params.negatives, "train_queries": len(data.query_texts), "init": str(init), "items": items}
    return {**head, **summary}
