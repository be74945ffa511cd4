"""Training-step throughput of the pipeline's trainers against the bare model, side by side in one process.

For each configuration (a trainer, a loss, a batch size) two runs over the same token batches:

- bare: `transformers.AutoModel` (float32 weights, bf16 autocast on CUDA), mean pooling, in-batch softmax
  cross-entropy (queries against the step's documents; for ADORE, against fixed vectors standing for the frozen
  positives), backward, fused AdamW (on CUDA). Its inputs are the stage's own token batches (`sample_batch` /
  `batch_queries`, then `Encoder.tokenize`, exactly the calls of the stage's ``batch_loss``), built and moved to the
  device before the clock starts: the ceiling for these shapes and this padding.
- stage: the stage's own training loop, `stages.ml.training.train` (it makes AdamW and the scheduler, wraps and runs the
  loop), with the per-step closure that `star_training.train_star` / `train_adore.train_adore` build
  (`star_training.step_losses`: the host side of each step prepared ahead on a thread; `batch_queries` +
  `train_adore.batch_loss`) and the encoder set up as those stages set it up (`training.initial_encoder`:
  seed, load, move). The loop body is not a callable of its own, so the smallest unit that holds a whole step is
  `train` run for warm-up + timed + 1 steps.

Both runs are timed over a window: one ``torch.cuda.synchronize()`` where the first timed step starts and one where
the step after the last starts, nothing in between, so the host may queue a step while the device computes the one
before, as the loop does (see ``INCLUDES`` below, also written into the JSON). Outside the steps `train` also saves
the model, the log and the loss plot; that is reported as ``outside_steps_s``, not in the step times.

Configurations: the warm-up (`train_warmup`: STAR's trainer on BM25-like negatives, 1 a query, pairwise), STAR
pairwise (1 hard negative a query) and STAR listwise (softmax loss, 5 hard negatives a query), at the paper's batch
size (256 queries) and ours (32); ADORE (top-200 retrieved each step, MRR-weighted pairwise loss) on a flat index and
on a PQ index (M = dim / 8 sub-quantisers of 8 bits, scored with reconstructed vectors), both over ``--adore-docs``
random unit vectors (1M by default: search latency does not depend on the values), at 32 queries (paper = ours).

Texts: the MS MARCO-shaped generator (`benchmarks/msmarco_synthetic.py`: passages of ~56 words, queries of ~6
words), else SciFact cut to those lengths. Each query has one or two positives and 200 random passages as its
"mined" negatives (their texts have the passages' lengths, which is all a step's cost depends on).

Per configuration and run: mean step time over ``--steps`` timed steps after ``--warmup-steps``, queries/s, real
(non-padding) and padded tokens/s (mean tokens a step over the mean step), share of peak = model FLOPs / step time
/ 989e12 (FLOPs: 3 x `encode_throughput.flops` over the real token lengths of every forward pass, i.e. 6 x
non-embedding parameters x tokens + 12 x layers x hidden x tokens^2; search FLOPs are not counted), and the ratio
stage / bare. Prints one JSON object on stdout (progress on stderr) and writes it to ``--out`` after each
configuration, so a time limit keeps what finished.

    python benchmarks/train_throughput.py --model PATH [--quick] [--budget-s 180] [--out FILE]
    python benchmarks/train_throughput.py --quick --device cpu --model TINY_MODEL   # smoke test: tiny sizes
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # its sibling benchmarks, and `stages` without an install

from encode_throughput import flops, non_embedding_parameters  # noqa: E402

from stages.ml import distributed, training  # noqa: E402
from stages import train_adore
from stages.ml import star_training
from stages.ml.frozen_documents import FrozenDocuments
from stages.core import settings  # noqa: E402
from stages.core.model_source import resolve_model  # noqa: E402
from stages.ml.models import load_encoder  # noqa: E402
from stages.ml.search import FlatTorchSearcher, PQTorchSearcher  # noqa: E402
from stages.train_warmup import WarmupParams  # noqa: E402
from stages.ml.graphed import GRAPHS_ENV, FixedShapeStep  # noqa: E402
from stages.ml.training import batch_shape, initial_encoder, train  # noqa: E402
from stages.core.artifacts import TRAIN_LOG

SPEC_PEAK = 989e12  # H100/H200 SXM dense bf16, the spec sheet
SCIFACT = ROOT / "resources" / "scifact"
TEMPERATURE = 0.05
MINED_DEPTH = 200
SOURCES = ("stages/ml/training.py", "stages/train_star.py", "stages/train_adore.py", "stages/train_warmup.py",
           "stages/ml/models.py", "stages/ml/search.py", "stages/ml/pq_kernels.py", "stages/ml/distributed.py")

INCLUDES = {
    "bare": (
        "the step's token batches already on the device (no tokenizing, no host-to-device copy); forward of each "
        "batch (queries, then documents for STAR) through transformers.AutoModel (float32 weights, bf16 autocast on "
        "CUDA, train mode: dropout on), mean pooling, L2 norm, in-batch softmax cross-entropy (STAR: queries x the "
        "step's documents; ADORE: queries x fixed vectors standing for their positives, no search), "
        "zero_grad(set_to_none), backward, AdamW step (fused on CUDA; no clipping, no scheduler); "
        "torch.cuda.synchronize() before and after"
    ),
    "stage_star": (
        "one iteration of stages.ml.training.train's loop with star_training.step_losses' closure: the step's host side "
        "(sample_batch, vectorised pair_masks, token ids gathered from the TokenCache filled before step 1, packed "
        "without padding where the flash kernel runs, loss_index, pinned) comes from the Prefetcher's thread, "
        "prepared while the device runs earlier steps; non-blocking copies, two forward passes of the Encoder "
        "(float32 weights, bf16 autocast on CUDA; Encoder.forward_packed: varlen flash attention, no attention "
        "dropout), float32 scores and star_loss (logged terms as 0-dim tensors), then the loop: zero_grad, "
        "backward, clip_grad_norm_, fused AdamW (make_optimizer: two groups), LambdaLR step; the logged values "
        "are read back every 50 steps (not within the timed steps); no checkpoint (no work folder)"
    ),
    "stage_adore": (
        "one iteration of stages.ml.training.train's loop with train_adore's closure: batch_queries, "
        "train_adore.batch_loss = the batch's rows of the queries tokenized once before step 1 (ResidentQueries on "
        "the device; one pinned copy of the batch's index), padded forward (float32 weights, bf16 autocast on "
        "CUDA), search of the top_k over the index (FrozenDocuments over FlatTorchSearcher / PQTorchSearcher on "
        "the device), rank_pairs and swap_weights on the device, scores of the retrieved documents and the "
        "positives (flat vectors / decoded PQ centroids), lambda_loss, CUDA-event intervals for its clocks, then "
        "the loop as for STAR. On CUDA the loop replays that step (train_adore.fixed_shape_step: every query padded "
        "to the longest of all) captured once in a CUDA graph (stages.ml.graphed), with clipping and AdamW inside; "
        "stage_eager is the same steps from the same weights with the graph off (HARDNEG_CUDA_GRAPHS=0). The "
        "document vectors are random unit vectors made on the device, not read from an "
        "index artifact"
    ),
}
NOT_MEASURED = [
    "several GPUs (DDP): see benchmarks/multi_gpu.py",
    "ADORE with pq_scoring 'uncompressed' (the paper code's), OPQ, gradient checkpointing, checkpoint writes",
    "the stages' data loading (reading the prepared artifact, negatives, the index file), model saving and the "
    "loss plot: once per run, not per step (saving + log + plot are in outside_steps_s)",
]
NOTES = [
    "warmup and star_pairwise run the same code (train_warmup is train_star with negatives 'star', 1 hard negative, "
    "pairwise) and differ only in the model they start from: their steps should match (a check of the noise)",
    "stage.logged_step_s_mean is the stage's own clock (train_log.parquet 'seconds': the mean step of each logging "
    "window) over all its steps, warm-up included",
    "ADORE's peak_gpu_memory_gib includes the resident index; its encode_s / search_s are batch_loss's own clocks "
    "(CUDA events: device time of the query forward and of the search)",
    "tokens/s: the timed steps' mean tokens over the mean step time; both runs see the same batches "
    "(STAR: stage_saw_the_same_batches compares the shapes and token counts the stage tokenized with the bare's "
    "inputs; ADORE tokenizes every training query once, before its first step, so there is nothing per step to "
    "compare: null)",
]


# --- texts ---------------------------------------------------------------------------------------------------------


@dataclass
class Texts:
    passages: list[str]
    queries: list[str]
    positives: list[list[int]]
    """Passage numbers judged relevant to each query."""
    source: str


def synthetic_texts(passages: int, queries: int, seed: int) -> Texts:
    """MS MARCO-shaped passages and queries from `msmarco_synthetic.generate` (written to a temporary folder)."""
    from msmarco_synthetic import generate

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        generate(folder, passages, train=queries, dev=1, seed=seed)
        row_of, texts = {}, []
        with open(folder / "collection.tsv", encoding="utf-8") as handle:
            for line in handle:
                pid, text = line.rstrip("\n").split("\t", 1)
                row_of[pid] = len(texts)
                texts.append(text)
        judged: dict[str, list[int]] = {}
        with open(folder / "qrels.train.tsv", encoding="utf-8") as handle:
            for line in handle:
                qid, _, pid, _ = line.split("\t")
                judged.setdefault(qid, []).append(row_of[pid])
        query_texts, positives = [], []
        with open(folder / "queries.train.tsv", encoding="utf-8") as handle:
            for line in handle:
                qid, text = line.rstrip("\n").split("\t", 1)
                query_texts.append(text)
                positives.append(judged[qid])
    return Texts(texts, query_texts, positives, "benchmarks/msmarco_synthetic.py")


def scifact_texts(passages: int, queries: int, seed: int) -> Texts:
    """SciFact's documents cut into ~56-word passages and its queries cut to ~6 words (the fallback)."""
    import gzip

    rng = np.random.default_rng(seed)
    words: list[str] = []
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            words += f"{doc.get('title', '')} {doc['text']}".split()
            if len(words) > passages * 80:
                break
    lengths = np.clip(rng.gamma(4.0, 14.0, passages).astype(int), 8, 250)
    starts = rng.integers(0, max(1, len(words) - 250), passages)
    texts = [" ".join(words[s : s + n]) for s, n in zip(starts.tolist(), lengths.tolist())]
    sources = [json.loads(line)["text"].split() for line in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    query_texts = [" ".join(sources[i % len(sources)][:6]) for i in range(queries)]
    positives = [[int(p)] for p in rng.integers(0, passages, queries)]
    return Texts(texts, query_texts, positives, "resources/scifact (cut to ~56 / ~6 words)")


def make_texts(passages: int, queries: int, seed: int) -> Texts:
    try:
        return synthetic_texts(passages, queries, seed)
    except Exception as error:  # noqa: BLE001 - the generator is work in progress elsewhere; SciFact is the fallback
        print(f"msmarco_synthetic unavailable ({type(error).__name__}: {error}); using SciFact", file=sys.stderr)
        return scifact_texts(passages, queries, seed)


def star_data(texts: Texts, seed: int) -> star_training.TrainingData:
    """train_star's TrainingData: passage i has id str(i); each query's 'mined' negatives are 200 random passages."""
    rng = np.random.default_rng([seed, 7])
    drawn = rng.integers(0, len(texts.passages), (len(texts.queries), MINED_DEPTH))
    mined = []
    for row, positives in zip(drawn.tolist(), texts.positives):
        judged = set(positives)
        mined.append([str(p) for p in row if p not in judged])
    return star_training.TrainingData(
        query_texts=list(texts.queries),
        positives=[[str(p) for p in positives] for positives in texts.positives],
        judged=[{str(p) for p in positives} for positives in texts.positives],
        mined=mined,
        doc_text={str(i): text for i, text in enumerate(texts.passages)},
        doc_ids=np.array([str(i) for i in range(len(texts.passages))], dtype=object),
    )


def adore_data(texts: Texts, documents: int, seed: int) -> train_adore.TrainingData:
    """train_adore's TrainingData: the queries with 1 (90%) or 2 judged positives at random rows of the index."""
    rng = np.random.default_rng([seed, 11])
    counts = np.where(rng.random(len(texts.queries)) < 0.1, 2, 1)
    return train_adore.TrainingData(
        query_texts=list(texts.queries),
        positive_rows=[rng.choice(documents, size=int(n), replace=False).astype(np.int64) for n in counts],
        positive_gains=[np.ones(int(n)) for n in counts],
    )


# --- the frozen document side of ADORE -----------------------------------------------------------------------------


def random_units(rows: int, dim: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    matrix = torch.empty((rows, dim), dtype=dtype, device=device)
    for start in range(0, rows, 1 << 20):  # blockwise: no float32 copy of the whole
        values = torch.randn((min(1 << 20, rows - start), dim), device=device, generator=generator)
        matrix[start : start + len(values)] = F.normalize(values, dim=1).to(dtype)
    return matrix


def frozen_documents(kind: str, rows: int, dim: int, pq_m: int, device: torch.device, seed: int):
    """`FrozenDocuments` over ``rows`` random documents: flat (unit vectors) or PQ (random codes)."""
    if kind == "flat":
        searcher = FlatTorchSearcher(torch.empty((0, dim)), device=device)
        searcher.matrix = random_units(rows, dim, searcher.dtype, device, seed)  # made on the device, no copy
        return FrozenDocuments(searcher, "flat")
    if dim % pq_m:
        raise SystemExit(f"--pq-m {pq_m} does not divide the model's dimension {dim}")
    generator = torch.Generator(device=device).manual_seed(seed)
    codes = torch.randint(0, 256, (rows, pq_m), dtype=torch.uint8, device=device, generator=generator)
    centroids = torch.randn((pq_m, 256, dim // pq_m), device=device, generator=generator) / math.sqrt(dim)
    return FrozenDocuments(PQTorchSearcher(codes, centroids, device=device), "reconstructed")


# --- token batches, as the stages build them -----------------------------------------------------------------------


def star_tokens(encoder, data: star_training.TrainingData, params, steps_per_epoch: int, step: int) -> list[dict]:
    """The tokens of one STAR step: the calls of `star_training.batch_loss` (one process), in its order."""
    epoch, index = divmod(step, steps_per_epoch)
    batch = star_training.sample_batch(data, params, epoch, index)
    rows = distributed.local_slice(len(batch.queries))
    part = star_training.rank_part(batch, rows, star_training.negatives_per_query(params))
    queries = encoder.tokenize([data.query_texts[q] for q in part.queries], params.query_max_length)
    docs = encoder.tokenize([data.doc_text[d] for d in part.doc_ids], params.doc_max_length)
    return [queries, docs]


def adore_tokens(encoder, data: train_adore.TrainingData, params, steps_per_epoch: int, step: int) -> list[dict]:
    """The tokens of one ADORE step: the calls of `train_adore.batch_loss` (one process)."""
    epoch, index = divmod(step, steps_per_epoch)
    queries = train_adore.batch_queries(len(data.query_texts), params, epoch, index)
    queries = queries[distributed.local_slice(len(queries))]
    return [encoder.tokenize([data.query_texts[q] for q in queries], params.query_max_length)]


def shape_of(batches: list[dict]) -> list[tuple]:
    return [(tuple(b["input_ids"].shape), int(b["attention_mask"].sum())) for b in batches]


@dataclass
class StepTokens:
    real: list[int] = field(default_factory=list)
    padded: list[int] = field(default_factory=list)
    texts: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)

    def add(self, batches: list[dict], model_config, non_embedding: int) -> None:
        lengths = np.concatenate([b["attention_mask"].sum(dim=1).numpy() for b in batches])
        self.real.append(int(lengths.sum()))
        self.padded.append(sum(int(b["input_ids"].numel()) for b in batches))
        self.texts.append(int(sum(len(b["input_ids"]) for b in batches)))
        self.flops.append(3 * flops(model_config, non_embedding, lengths))  # forward + backward


# --- timing --------------------------------------------------------------------------------------------------------


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextmanager
def cpu_threads(device: torch.device):
    """The bare model on the CPU with the training loop's fixed thread count (stages.ml.training.CPU_THREADS)."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(training.CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def release(device: torch.device) -> None:
    """Free the device memory of what is gone (on the CPU nothing: a full collection there only costs time)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def bare_run(model_path: str, kind: str, batches: list[list[dict]], warmup: int, device: torch.device) -> dict:
    """The bare model's fwd + bwd + AdamW on ``batches`` (on the device before timing); the steps after ``warmup``."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True).to(device).train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, fused=fused)
    autocast = device.type == "cuda"
    on_device = [[(b["input_ids"].to(device), b["attention_mask"].to(device)) for b in step] for step in batches]
    dim = int(model.config.hidden_size)
    positives = F.normalize(torch.randn((max(len(s[0][0]) for s in on_device), dim), device=device), dim=1)

    def step(inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        pooled = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for ids, mask in inputs:
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                weights = mask.unsqueeze(-1).float()
                pooled.append(F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1))
        queries = pooled[0]
        documents = pooled[1] if kind == "star" else positives[: len(queries)]
        scores = queries @ documents.T / TEMPERATURE
        loss = F.cross_entropy(scores, torch.arange(len(queries), device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with cpu_threads(device):
        for inputs in on_device:  # an untimed pass over every shape first: the allocator and the kernels' choices
            step(inputs)          # settle (the first configuration of a process otherwise runs 3-8x slower)
        for index, inputs in enumerate(on_device):
            if index == warmup:
                began = clock(device)
            step(inputs)
        window = clock(device) - began
    return {"window_s": window, "fused_adamw": fused, "peak_gpu_memory_gib": peak_gib(device)}


class StepRecorder:
    """Wraps a stage's per-step closure: a synchronised timestamp at the start of each call (so consecutive stamps
    bound one whole loop iteration), the extras it returns, and the tokens and time of the encoder's tokenize calls
    and of `star_training.pair_masks` (observed, not changed)."""

    def __init__(self, device: torch.device, edges: tuple[int, int]):
        self.device = device
        self.edges = edges
        """The calls that start and end the timed window (synchronised stamps)."""
        self.stamps: list[float] = []
        self.extras: list[dict] = []
        self.shapes: list[list[tuple]] = []
        self.tokenize_s: list[float] = []
        self.pair_masks_s: list[float] = []
        self.pretokenize_s: float | None = None

    def closure(self, step_loss: Callable) -> Callable:
        def timed(model, epoch, batch):
            # waiting for the device only where the timed window starts and ends: a wait every step would stop
            # the host from queueing the next step while the device computes, which the loop is built to do
            edge = len(self.stamps) in self.edges
            self.stamps.append(clock(self.device) if edge else time.perf_counter())
            loss, extras = step_loss(model, epoch, batch)
            self.extras.append(dict(extras))
            return loss, extras

        return timed

    def fixed(self, step):
        """A `FixedShapeStep` whose host side (called once per replayed step) is stamped as `closure` stamps."""
        def batch_index(epoch, batch):
            edge = len(self.stamps) in self.edges
            self.stamps.append(clock(self.device) if edge else time.perf_counter())
            return step.batch_index(epoch, batch)

        return FixedShapeStep(step.batch_size, batch_index, step.loss_at)

    @contextmanager
    def observe_tokenize(self):
        """Every tokenize call of STAR's host side (`star_training.host_tokenizer`): its shape and time, in call
        order: the prefetch thread tokenizes the steps ahead of the device, in step order (queries, then documents,
        of each step)."""
        original = star_training.host_tokenizer

        def host_tokenizer(*args):
            began = time.perf_counter()
            tokenize = original(*args)
            self.pretokenize_s = time.perf_counter() - began  # every text, once, before the first step

            def observed(texts, max_length):
                began = time.perf_counter()
                batch = tokenize(texts, max_length)
                self.tokenize_s.append(time.perf_counter() - began)
                self.shapes.append((tuple(batch["input_ids"].shape), int(batch["attention_mask"].sum())))
                return batch

            return observed

        star_training.host_tokenizer = host_tokenizer
        try:
            yield
        finally:
            star_training.host_tokenizer = original

    @contextmanager
    def observe_pair_masks(self):
        original = star_training.pair_masks

        def pair_masks(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.pair_masks_s.append(time.perf_counter() - began)

        star_training.pair_masks = pair_masks
        try:
            yield
        finally:
            star_training.pair_masks = original


def stage_run(
    encoder, params, steps_per_epoch: int, step_losses: Callable, warmup: int, timed: int, device: torch.device,
    star: bool,
) -> dict:
    """`stages.ml.training.train` for warmup + timed + 1 steps; the timed steps' times and what was observed in them."""
    recorder = StepRecorder(device, (warmup, warmup + timed))
    observing = (recorder.observe_tokenize(), recorder.observe_pair_masks()) if star else (_nothing(), _nothing())
    with tempfile.TemporaryDirectory() as out, observing[0], observing[1]:
        began = time.perf_counter()
        with step_losses() as step_loss:
            fixed = recorder.fixed(step_loss.fixed_shape) if getattr(step_loss, "fixed_shape", None) else None
            summary = train(encoder, params, steps_per_epoch, recorder.closure(step_loss), Path(out), fixed_shape=fixed)
        total = time.perf_counter() - began
        logged = pd.read_parquet(Path(out) / TRAIN_LOG)
    chosen = slice(warmup, warmup + timed)
    steps = len(recorder.stamps)
    result = {
        "window_s": recorder.stamps[warmup + timed] - recorder.stamps[warmup],
        "logged_step_s_mean": float(logged["seconds"].mean()),
        "host_tokenize_s_per_step": float(np.sum(recorder.tokenize_s)) / steps if star else None,  # overlapped
        "host_pretokenize_s": recorder.pretokenize_s,  # STAR: every text of the run, before step 1 (not timed)
        "outside_steps_s": round(total - float(np.diff(recorder.stamps).sum()) - float(logged["seconds"].iloc[-1]), 3),
        "peak_gpu_memory_gib": summary.get("peak_gpu_memory_gib"),  # ADORE: with the resident index
        "cuda_graph": summary.get("cuda_graph"),
        # STAR: each step's (queries, documents) tokenize calls; ADORE tokenizes every query once, before step 1
        "shapes": [recorder.shapes[2 * i : 2 * i + 2] for i in range(steps)][chosen] if star else None,
    }
    if star:
        result["host_pair_masks_s_per_step"] = float(np.sum(recorder.pair_masks_s)) / steps
    elif recorder.extras[chosen]:  # eager steps: batch_loss's own (device) clocks; a graph's steps have none
        extras = pd.DataFrame([{k: float(v) for k, v in row.items()} for row in recorder.extras[chosen]])
        result["encode_s_median"] = float(extras["encode_seconds"].median())
        result["search_s_median"] = float(extras["search_seconds"].median())
    return result


@contextmanager
def _nothing():
    yield


def significant(value: float, digits: int = 5) -> float:
    return float(f"{value:.{digits}g}")


def rates(window: float, tokens: StepTokens, batch_size: int) -> dict:
    """The mean step over the timed window and the throughputs of the mean step's tokens over it."""
    step = window / len(tokens.real)
    return {
        "step_s": significant(step),
        "queries_per_s": significant(batch_size / step),
        "real_tokens_per_s": significant(float(np.mean(tokens.real)) / step),
        "padded_tokens_per_s": significant(float(np.mean(tokens.padded)) / step),
        "tflops": significant(float(np.mean(tokens.flops)) / step / 1e12),
        "share_of_peak": significant(float(np.mean(tokens.flops)) / step / SPEC_PEAK, 4),
    }


# --- configurations ------------------------------------------------------------------------------------------------


@dataclass
class Config:
    name: str
    stage: str
    batch_size: int
    role: str
    options: dict[str, Any]


def configurations(args) -> list[Config]:
    configs = []

    def roles(paper: int, ours: int) -> list[tuple[int, str]]:
        return [(paper, "paper=ours")] if paper == ours else [(paper, "paper"), (ours, "ours")]

    star_kinds = {
        "warmup": ("train_warmup", {"negatives": "star", "hard_negatives_per_query": 1, "loss": "pairwise"}),
        "star_pairwise": ("train_star", {"negatives": "star", "hard_negatives_per_query": 1, "loss": "pairwise"}),
        "star_listwise_5neg": ("train_star", {"negatives": "star", "hard_negatives_per_query": 5, "loss": "softmax"}),
    }
    for size, role in roles(args.paper_star_batch, args.our_batch):
        for name, (stage, options) in star_kinds.items():
            configs.append(Config(f"{name}@{size}", stage, size, role, options))
    for size, role in roles(args.paper_adore_batch, args.our_batch):
        for kind in ("flat", "pq"):
            configs.append(Config(f"adore_{kind}@{size}", "train_adore", size, role, {"index": kind}))
    if args.only:
        configs = [c for c in configs if any(c.name.startswith(prefix) for prefix in args.only)]
    return configs


def run_config(config: Config, args, texts: Texts, cache: dict, device: torch.device) -> dict:
    """Bare and stage runs of one configuration. ``cache`` keeps STAR's data and the last ADORE index."""
    steps = args.warmup_steps + args.steps + 1  # + 1: the last step's start ends the last timed step
    common = dict(
        model=args.model_spec, batch_size=config.batch_size, max_steps=steps, seed=args.seed, checkpoint_every=0,
        query_max_length=args.query_max_length, doc_max_length=args.doc_max_length, temperature=TEMPERATURE,
    )
    star, section = config.stage != "train_adore", config.stage.removeprefix("train_")
    if star:
        params_class = WarmupParams if config.stage == "train_warmup" else star_training.StarParams
        params = settings.params(params_class, section, "encoder", **common, **config.options)
        if "star_data" not in cache:
            cache["star_data"] = star_data(texts, args.seed)
        data = cache["star_data"]
    else:
        adore = {"top_k": args.top_k, "metric": "mrr", "metric_cutoff": args.top_k}
        params = settings.params(train_adore.AdoreParams, section, "encoder", **common, **adore)
        train_adore.check_params(params)
    encoder, _ = initial_encoder(params, {}, device)  # as the stages: seed, load, move
    if not star:
        key = f"index:{config.options['index']}"
        if key not in cache:
            for other in [k for k in cache if k.startswith("index:")]:  # one index resident at a time
                del cache[other]
            release(device)
            began = time.perf_counter()
            pq_m = args.pq_m or encoder.dim // 8
            kind = config.options["index"]
            cache[key] = frozen_documents(kind, args.adore_docs, encoder.dim, pq_m, device, args.seed)
            print(f"  {key} of {args.adore_docs} x {encoder.dim}: {time.perf_counter() - began:.1f} s",
                  file=sys.stderr, flush=True)
        documents = cache[key]
        data = adore_data(texts, documents.ntotal, args.seed)
    size, steps_per_epoch = batch_shape(params.batch_size, len(data.query_texts))

    # the token batches of every step, by the stage's own batch building (also the bare model's inputs)
    build = star_tokens if star else adore_tokens
    batches = [build(encoder, data, params, steps_per_epoch, step) for step in range(steps)]
    timed = slice(args.warmup_steps, args.warmup_steps + args.steps)
    tokens = StepTokens()
    non_embedding = non_embedding_parameters(encoder.model)
    for step_batches in batches[timed]:
        tokens.add(step_batches, encoder.model.config, non_embedding)

    bare = bare_run(resolve_model(args.model_spec), "star" if star else "adore", batches[: timed.stop],
                    args.warmup_steps, device)
    release(device)

    if star:
        def step_losses():  # star_training.train_star's closure: the host side of each step prepared ahead
            return star_training.step_losses(encoder, data, params, steps_per_epoch, device)
    else:
        @contextmanager
        def step_losses():  # as train_adore.train_adore builds it
            def step_loss(model, epoch, batch):
                queries = train_adore.batch_queries(len(data.query_texts), params, epoch, batch)
                return train_adore.batch_loss(model, data, params, queries, documents, device)

            data.resident = train_adore.ResidentQueries.build(data, encoder.tokenizer, params.query_max_length, device)
            step_loss.fixed_shape = train_adore.fixed_shape_step(data, params, documents, device)
            yield step_loss

    weights = {name: value.detach().clone() for name, value in encoder.state_dict().items()} if not star else None
    stage = stage_run(encoder, params, steps_per_epoch, step_losses, args.warmup_steps, args.steps, device, star)
    eager = None
    if not star and stage.get("cuda_graph"):  # the same steps without the graph, from the same weights
        encoder.load_state_dict(weights)
        os.environ[GRAPHS_ENV] = "0"
        try:
            eager = stage_run(encoder, params, steps_per_epoch, step_losses, args.warmup_steps, args.steps, device, star)
        finally:
            del os.environ[GRAPHS_ENV]
    shapes = stage.pop("shapes")
    same = shapes == [shape_of(b) for b in batches[timed]] if star else None
    result = {
        "trainer": config.stage,
        "batch_size": size,
        "batch_role": config.role,
        "params": {k: v for k, v in vars(params).items() if k in (
            "negatives", "hard_negatives_per_query", "loss", "random_weight", "temperature", "query_max_length",
            "doc_max_length", "top_k", "metric", "metric_cutoff", "pq_scoring", "learning_rate", "grad_clip", "bf16")},
        "tokens_per_step": {
            "texts": float(np.mean(tokens.texts)),
            "real": float(np.mean(tokens.real)),
            "padded": float(np.mean(tokens.padded)),
            "padding_share": round(1 - float(np.sum(tokens.real)) / float(np.sum(tokens.padded)), 4),
            "model_gflop": significant(float(np.mean(tokens.flops)) / 1e9),
        },
        "stage_saw_the_same_batches": same,
        "bare": {**rates(bare.pop("window_s"), tokens, size), **bare},
        "stage": {**rates(stage.pop("window_s"), tokens, size), **stage},
    }
    if eager is not None:
        eager.pop("shapes")
        result["stage_eager"] = {**rates(eager.pop("window_s"), tokens, size), **eager}
        result["graph_over_eager_step_time"] = round(result["stage"]["step_s"] / result["stage_eager"]["step_s"], 4)
    if not star:
        searcher = documents.searcher
        result["index"] = {
            "kind": config.options["index"],
            "documents": documents.ntotal,
            "dim": searcher.dim,
            "scoring": documents.scoring,
            "kernel": getattr(searcher, "kernel", "matmul"),
            "pq_m": getattr(searcher, "m", None),
            "search_gflop_per_step": significant(2 * size * documents.ntotal * searcher.dim / 1e9),
        }
    result["stage_over_bare_step_time"] = round(result["stage"]["step_s"] / result["bare"]["step_s"], 4)
    result["stage_share_of_bare_speed"] = round(result["bare"]["step_s"] / result["stage"]["step_s"], 4)
    del encoder
    release(device)
    return result


# --- provenance ----------------------------------------------------------------------------------------------------


def provenance(device: torch.device) -> dict:
    import transformers

    def git(*command: str) -> str | None:
        try:
            done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "stages", "benchmarks")
    sources = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / name
        sources.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({training.CPU_THREADS} threads)"
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_stages_or_benchmarks": None if status is None else bool(status),
        "stage_sources_sha256": sources.hexdigest()[:16],
    }


# --- main ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled", help="'bundled' (all-MiniLM-L6-v2) or a model folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="2 warm-up + 5 timed steps a run (else 3 + 10)")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per run")
    parser.add_argument("--budget-s", type=float, default=180.0,
                        help="start no configuration after this many seconds (those left are listed as skipped)")
    parser.add_argument("--paper-star-batch", type=int, help="default 256 (CUDA) / 8 (CPU)")
    parser.add_argument("--paper-adore-batch", type=int, help="default 32 (CUDA) / 4 (CPU)")
    parser.add_argument("--our-batch", type=int, help="default 32 (CUDA) / 4 (CPU)")
    parser.add_argument("--adore-docs", type=int, help="documents in ADORE's indexes; default 1M (CUDA) / 20,000")
    parser.add_argument("--pq-m", type=int, default=0, help="PQ sub-quantisers; 0: dim / 8 (48 for 384-d)")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--passages", type=int, help="generated passages; default 20,000 (CUDA) / 2,000")
    parser.add_argument("--queries", type=int, help="generated train queries; default 4,096 (CUDA) / 64")
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--doc-max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", nargs="*", help="run only configurations whose name starts with one of these")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU")
    gpu = args.device == "cuda"
    defaults = {
        "warmup_steps": 2 if args.quick else 3,
        "steps": 5 if args.quick else 10,
        "paper_star_batch": 256 if gpu else 8,
        "paper_adore_batch": 32 if gpu else 4,
        "our_batch": 32 if gpu else 4,
        "adore_docs": 1_000_000 if gpu else 20_000,
        "passages": 20_000 if gpu else 2_000,
        "queries": 4096 if gpu else 64,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup_steps < 1 or args.steps < 1:
        parser.error("--warmup-steps and --steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    began = time.perf_counter()
    device = torch.device(args.device)
    args.model_spec = str(args.model)
    report: dict[str, Any] = {
        "benchmark": "train_throughput",
        **provenance(device),
        "model": args.model_spec,
        "peak_flops": SPEC_PEAK,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "model_spec")},
        "includes": INCLUDES,
        "not_measured": NOT_MEASURED,
        "notes": NOTES,
        "configurations": {},
        "skipped": [],
        "errors": {},
    }
    texts = make_texts(args.passages, max(args.queries, 2 * max(args.paper_star_batch, args.our_batch)), args.seed)
    report["texts"] = {
        "source": texts.source,
        "passages": len(texts.passages),
        "queries": len(texts.queries),
        "mean_passage_words": round(float(np.mean([len(t.split()) for t in texts.passages])), 2),
        "mean_query_words": round(float(np.mean([len(t.split()) for t in texts.queries])), 2),
    }
    model = load_encoder(args.model_spec).model
    report["model_config"] = {
        "layers": int(model.config.num_hidden_layers),
        "hidden": int(model.config.hidden_size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "non_embedding_parameters": non_embedding_parameters(model),
    }
    del model
    print(f"texts and model ready in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)

    def write() -> str:
        report["seconds"] = round(time.perf_counter() - began, 2)
        text = json.dumps(report, indent=2, default=float)
        if args.out:
            args.out.write_text(text + "\n")
        return text

    cache: dict = {}
    for config in configurations(args):
        if time.perf_counter() - began > args.budget_s:
            report["skipped"].append(config.name)
            continue
        print(f"{config.name} ({config.stage}, {config.role})", file=sys.stderr, flush=True)
        try:
            result = run_config(config, args, texts, cache, device)
        except Exception as error:  # noqa: BLE001 - keep the other configurations (e.g. out of memory at 256)
            report["errors"][config.name] = "".join(traceback.format_exception(error)[-6:])
            print(report["errors"][config.name], file=sys.stderr, flush=True)
            release(device)
            continue
        report["configurations"][config.name] = result
        bare, stage = result["bare"], result["stage"]
        print(
            f"  bare {1e3 * bare['step_s']:.2f} ms ({bare['share_of_peak']:.1%} of peak), stage "
            f"{1e3 * stage['step_s']:.2f} ms ({stage['share_of_peak']:.1%}): stage/bare "
            f"{result['stage_over_bare_step_time']:.2f}x, {stage['queries_per_s']:.0f} queries/s",
            file=sys.stderr,
            flush=True,
        )
        write()
    cache.clear()
    print(write())
    return report


if __name__ == "__main__":
    main()
