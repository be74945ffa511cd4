"""Stage train_adore: LambdaLoss weights, positives outside the top-k, a frozen document side, PQ scoring, the CLI
with resume, and evaluating the trained query encoder with `retrieve`."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    assert_same_weights,
    encode_params,
    killed_then_resumed,
    model_tensors,
    tensors_under,
    tiny_training,
)

from stages.encode import encode
from stages.core.artifacts import EMBEDDINGS, vector_files
from stages.core import settings
from stages.core.errors import ConfigError
from stages.index import IndexParams, build_index
from stages.retrieve import RetrieveParams, retrieve
from stages.ml.index_kinds import open_index
from stages.ml.search import faiss_search
from stages.core.tables import read_embeddings, read_run
from stages.train_adore import AdoreParams, Positives, QueryTokens, TrainingData, batch_loss, batch_queries, load_training_data, train_adore
from stages.ml.timing import Interval
from stages.ml.frozen_documents import frozen_documents
from stages.ml.lambda_loss import lambda_loss, rank_pairs, swap_weights


# --- weights, by hand and by brute force ---------------------------------------------------------------------------


def metric_of(gains: list[float], metric: str, cutoff: int, ideal: float) -> float:
    """MRR or nDCG of a full ranked list of gains (position i = rank i + 1)."""
    if metric == "mrr":
        return next((1 / (i + 1) for i, g in enumerate(gains[:cutoff]) if g > 0), 0.0)
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:cutoff])) / ideal


def brute_force_weights(retrieved, positives, gains, metric, cutoff) -> np.ndarray:
    """Swap each (positive, retrieved negative) in a full list: the top-k, then the unretrieved positives."""
    k = len(retrieved)
    gain_of = dict(zip(positives, gains))
    ranked = list(retrieved) + [None] * len(positives)  # unretrieved positive j at rank k + 1 + j
    for j, p in enumerate(positives):
        if p not in retrieved:
            ranked[k + j] = p
    listed = [gain_of.get(d, 0.0) if d is not None else 0.0 for d in ranked]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains, reverse=True)[:cutoff]))
    before = metric_of(listed, metric, cutoff, ideal)
    weights = np.zeros((len(positives), k))
    for j, p in enumerate(positives):
        for n, doc in enumerate(retrieved):
            if doc in gain_of:
                continue
            swapped = list(listed)
            position = ranked.index(p)
            swapped[position], swapped[n] = swapped[n], swapped[position]
            weights[j, n] = abs(metric_of(swapped, metric, cutoff, ideal) - before)
    return weights


def pairs_of(retrieved, positives, gains, dtype=torch.float64):
    """`rank_pairs` of (B, k) retrieved rows and per-query positive lists, on the CPU."""
    padded = Positives.pad(positives, gains, torch.device("cpu"), dtype)
    return rank_pairs(torch.as_tensor(np.asarray(retrieved), dtype=torch.int64), padded.rows, padded.gains, padded.valid)


def weights_of(pairs, metric: str, cutoff: int) -> np.ndarray:
    return swap_weights(pairs, metric, cutoff).numpy()


def test_mrr_and_ndcg_weights_by_hand():
    # ranks: 10@1 11@2 12@3 13@4 14@5; positives 12 (rank 3), 14 (rank 5, grade 2) and 99 (not retrieved)
    pairs = pairs_of([[10, 11, 12, 13, 14]], [np.array([12, 14, 99])], [np.array([1.0, 2.0, 1.0])])
    assert pairs.positive_ranks.tolist() == [[3, 5, 8]]
    assert pairs.negative.tolist() == [[True, True, False, True, False]]
    mrr = weights_of(pairs, "mrr", cutoff=5)[0]
    # the first positive (rank 3) with negatives at 1, 2 (it becomes first) and 4 (it drops below the next, rank 4)
    np.testing.assert_allclose(mrr[0], [1 - 1 / 3, 1 / 2 - 1 / 3, 0, 1 / 3 - 1 / 4, 0])
    # the other positives only matter against negatives above the first one
    np.testing.assert_allclose(mrr[1], [1 - 1 / 3, 1 / 2 - 1 / 3, 0, 0, 0])
    np.testing.assert_allclose(mrr[2], [1 - 1 / 3, 1 / 2 - 1 / 3, 0, 0, 0])
    ndcg = weights_of(pairs, "ndcg", cutoff=5)[0]
    disc = [1 / math.log2(r + 1) for r in range(1, 6)]
    ideal = 2 * disc[0] + disc[1] + disc[2]
    np.testing.assert_allclose(ndcg[0], [abs(disc[2] - disc[r]) / ideal if r in (0, 1, 3) else 0 for r in range(5)])
    np.testing.assert_allclose(ndcg[1], [2 * abs(disc[4] - disc[r]) / ideal if r in (0, 1, 3) else 0 for r in range(5)])
    np.testing.assert_allclose(ndcg[2], [disc[r] / ideal if r in (0, 1, 3) else 0 for r in range(5)])
    # float32 (the type on CUDA): the same ranks, weights to float32 rounding
    single = pairs_of([[10, 11, 12, 13, 14]], [np.array([12, 14, 99])], [np.array([1.0, 2.0, 1.0])], torch.float32)
    assert single.positive_ranks.tolist() == [[3, 5, 8]]
    for metric, expected in (("mrr", mrr), ("ndcg", ndcg)):
        weights = swap_weights(single, metric, cutoff=5)
        assert weights.dtype == torch.float32
        np.testing.assert_allclose(weights[0].numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("metric", ["mrr", "ndcg"])
def test_weights_equal_brute_force_swaps(metric):
    rng = np.random.default_rng(3)
    for trial, cutoff in itertools.product(range(30), (3, 6)):
        retrieved = rng.permutation(20)[:6]
        positives = rng.choice(20, size=rng.integers(1, 4), replace=False)
        gains = rng.integers(1, 4, size=len(positives)).astype(float)
        pairs = pairs_of(retrieved[None, :], [positives], [gains])
        expected = brute_force_weights(list(retrieved), list(positives), list(gains), metric, cutoff)
        np.testing.assert_allclose(weights_of(pairs, metric, cutoff)[0], expected, atol=1e-12, err_msg=str(trial))


# the per-query numpy implementation that the vectorised one replaced: the reference for a whole batch


def reference_pairs(retrieved: np.ndarray, positive_rows: list[np.ndarray], positive_gains: list[np.ndarray]):
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
    return negative, rows, gains, ranks, np.isfinite(ranks)


def reference_weights(retrieved, positive_rows, positive_gains, metric: str, cutoff: int) -> np.ndarray:
    negative, _, positive_gains, positive_ranks, valid = reference_pairs(retrieved, positive_rows, positive_gains)
    k = retrieved.shape[1]
    rank_n = np.arange(1, k + 1, dtype=np.float64)[None, None, :]
    rank_p = positive_ranks[:, :, None]
    if metric == "mrr":
        def reciprocal(rank: np.ndarray) -> np.ndarray:
            return np.where(rank <= cutoff, 1.0 / rank, 0.0)

        ordered = np.sort(positive_ranks, axis=1)
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

        ideal_gains = -np.sort(-positive_gains, axis=1)[:, :cutoff]
        ideal = (ideal_gains * discount(np.arange(1.0, ideal_gains.shape[1] + 1))).sum(axis=1)
        gain = positive_gains[:, :, None]
        weights = gain * np.abs(discount(rank_p) - discount(rank_n)) / np.maximum(ideal, 1e-12)[:, None, None]
    real = valid[:, :, None] & negative[:, None, :]
    return np.where(real, np.abs(weights), 0.0)


@pytest.mark.parametrize("metric", ["mrr", "ndcg"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vectorised_weights_equal_the_per_query_reference(metric, dtype):
    rng = np.random.default_rng(11)
    queries, k, corpus = 16, 12, 40
    for trial, cutoff in itertools.product(range(10), (1, 4, 12)):
        retrieved = np.stack([rng.permutation(corpus)[:k] for _ in range(queries)])
        counts = rng.integers(1, 5, size=queries)
        positives = []
        for query, count in enumerate(counts):
            # some retrieved (anywhere, also beyond the cutoff), some not; row 0 is a common one (the padding row)
            pool = np.concatenate([retrieved[query][rng.permutation(k)[:2]], rng.choice(corpus, size=4), [0]])
            positives.append(rng.permutation(np.unique(pool))[:count].astype(np.int64))
        gains = [rng.integers(1, 4, size=len(p)).astype(float) for p in positives]
        # the batch takes a subset of all queries, in any order, cut to its widest (as batch_loss does)
        everything = Positives.pad(positives, gains, torch.device("cpu"), dtype)
        batch = rng.permutation(queries)[:10]
        taken = everything.take(torch.from_numpy(batch), int(everything.counts[batch].max()))
        pairs = rank_pairs(torch.from_numpy(retrieved[batch]), *taken)

        negative, rows, padded_gains, ranks, valid = reference_pairs(
            retrieved[batch], [positives[q] for q in batch], [gains[q] for q in batch]
        )
        message = f"trial {trial} cutoff {cutoff}"
        assert np.array_equal(pairs.negative.numpy(), negative), message
        assert np.array_equal(pairs.positive_rows.numpy(), rows), message
        assert np.array_equal(pairs.positive_gains.numpy(), padded_gains), message
        assert np.array_equal(pairs.positive_ranks.numpy(), ranks.astype(pairs.positive_ranks.numpy().dtype)), message
        assert np.array_equal(pairs.valid.numpy(), valid), message
        expected = reference_weights(retrieved[batch], [positives[q] for q in batch], [gains[q] for q in batch],
                                     metric, cutoff)
        weights = swap_weights(pairs, metric, cutoff)
        assert weights.dtype == dtype
        if dtype == torch.float64:
            np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-13, atol=1e-15, err_msg=message)
            # and what the loss gets: the same float32 weights as the numpy code gave
            assert np.array_equal(weights.float().numpy(), expected.astype(np.float32)), message
        else:
            np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-5, atol=1e-7, err_msg=message)


def test_query_tokens_are_what_the_encoder_tokenizes(tiny_model_dir):
    from stages.ml.models import load_encoder

    encoder = load_encoder(tiny_model_dir)
    texts = ["what is a cell", "  ", "a much longer query about the many proteins of the human cell membrane", "x y"]
    tokens = QueryTokens.tokenize(encoder.tokenizer, texts, 8, torch.device("cpu"), chunk_size=3)
    assert tokens.host_lengths.tolist() == tokens.lengths.tolist()
    for batch in ([0, 1, 2, 3], [3, 1], [1], [2, 0]):
        ids, mask = tokens.take(torch.tensor(batch), int(tokens.host_lengths[batch].max()))
        expected = encoder.tokenize([texts[q] for q in batch], 8)
        assert ids.dtype == mask.dtype == torch.int64
        assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"]), batch


def test_positives_outside_the_top_k_still_pull():
    pairs = pairs_of([[5, 6, 7], [1, 2, 3]], [np.array([9]), np.array([2, 8])], [np.ones(1), np.ones(2)])
    assert pairs.positive_ranks[0, 0] == 4 and pairs.valid.tolist() == [[True, False], [True, True]]
    # no positive retrieved: swapping it with the negative at rank r gains 1/r (the paper code's weight); cut at 2
    np.testing.assert_allclose(weights_of(pairs, "mrr", cutoff=3)[0, 0], [1, 1 / 2, 1 / 3])
    np.testing.assert_allclose(weights_of(pairs, "mrr", cutoff=2)[0, 0], [1, 1 / 2, 0])
    assert not weights_of(pairs, "mrr", cutoff=3)[0, 1].any()  # padding
    # second query: the unretrieved positive 8 pairs with the negative above the first positive
    np.testing.assert_allclose(weights_of(pairs, "mrr", cutoff=3)[1], [[1 / 2, 0, 1 / 2 - 1 / 3], [1 / 2, 0, 0]])
    scores = torch.zeros(2, 3, requires_grad=True)
    positive_scores = torch.zeros(2, 2, requires_grad=True)
    weights = swap_weights(pairs, "mrr", cutoff=3).float()
    real = pairs.valid[:, :, None] & pairs.negative[:, None, :]
    lambda_loss(scores, positive_scores, weights, real).backward()
    assert positive_scores.grad[1, 1] < 0  # the unretrieved positive is pushed up


def test_lambda_loss_is_the_mean_over_pairs_then_queries():
    retrieved = torch.tensor([[1.0, 0.0, 2.0]])
    positive = torch.tensor([[0.5]])
    weights = torch.tensor([[[0.2, 0.0, 0.4]]])
    real = torch.tensor([[[True, False, True]]])
    expected = (0.2 * math.log1p(math.exp(0.5)) + 0.4 * math.log1p(math.exp(1.5))) / 2
    assert float(lambda_loss(retrieved, positive, weights, real)) == pytest.approx(expected)


# --- the stage on the SciFact slice --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded(prepared, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adore-encode")
    encode(encode_params(model=str(tiny_model_dir), max_length=64, dtype="float32"), {"prepared": prepared}, out)
    return out


@pytest.fixture(scope="module")
def flat_index(encoded, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adore-flat")
    build_index(settings.params(IndexParams, "index"), {"shard_0": encoded}, out)
    return out


@pytest.fixture(scope="module")
def pq_index(encoded, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adore-pq")
    build_index(settings.params(IndexParams, "index", kind="pq", pq_m=8, pq_bits=4), {"shard_0": encoded}, out)
    return out


def assert_same_topk(scores, rows, expected_scores, expected_rows, tolerance: float = 1e-5) -> None:
    """Same scores, and the same rows wherever a score is not tied with another (ties may come in any order)."""
    np.testing.assert_allclose(scores, expected_scores, rtol=tolerance, atol=tolerance)
    for got, wanted, values in zip(rows, expected_rows, expected_scores):
        gaps = np.abs(values[:, None] - values[None, :]) + np.eye(len(values)) * 1e9
        untied = gaps.min(axis=1) > tolerance
        assert np.array_equal(got[untied], wanted[untied])


def tiny_params(model: Path, **changes) -> AdoreParams:
    return tiny_training(AdoreParams, "adore", model, **{"top_k": 20, "metric_cutoff": 10, "seed": 5, **changes})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_only_the_query_encoder_learns(prepared, flat_index, tiny_model_dir, tmp_path):
    from stages.ml.models import load_encoder

    params = tiny_params(tiny_model_dir)
    documents, doc_ids = frozen_documents(params.pq_scoring, {"index": flat_index}, torch.device("cpu"))
    data = load_training_data(prepared, doc_ids)
    encoder = load_encoder(tiny_model_dir)
    frozen = documents.searcher.matrix.clone()
    loss, extras = batch_loss(encoder, data, params, batch_queries(len(data.query_texts), params, 0, 0), documents,
                              torch.device("cpu"))
    loss.backward()
    assert loss > 0 and 0 <= float(extras["train_mrr"]) <= 1 and float(extras["search_seconds"]) >= 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    assert not documents.searcher.matrix.requires_grad and documents.searcher.matrix.grad is None

    index_hash = [sha256(file) for file in vector_files(flat_index)]
    train_adore(params, {"prepared": prepared, "index": flat_index}, tmp_path)
    assert [sha256(file) for file in vector_files(flat_index)] == index_hash
    assert torch.equal(documents.searcher.matrix, frozen)
    before, after = tensors_under(tiny_model_dir), model_tensors(tmp_path)
    assert any(not torch.equal(before[name], after[name]) for name in before if name in after)


@pytest.mark.parametrize("metric", ["mrr", "ndcg"])
def test_batch_loss_is_lazy_and_equals_the_per_query_reference(prepared, flat_index, tiny_model_dir, metric):
    from stages.ml.models import load_encoder

    params = tiny_params(tiny_model_dir, metric=metric, batch_size=6, top_k=15, metric_cutoff=7)
    device = torch.device("cpu")
    documents, doc_ids = frozen_documents(params.pq_scoring, {"index": flat_index}, device)
    loaded = load_training_data(prepared, doc_ids)
    data = TrainingData(loaded.query_texts, loaded.positive_rows, loaded.positive_gains)  # nothing resident yet
    encoder = load_encoder(tiny_model_dir).eval()  # no dropout: the reference below sees the same embeddings
    queries = batch_queries(len(data.query_texts), params, 0, 1)
    loss, extras = batch_loss(encoder, data, params, queries, documents, device)
    resident = data.resident
    assert resident is not None and resident.positives.rows.shape[0] == len(data.query_texts)

    # the values to log are lazy: 0-dim tensors and intervals, read by float()
    assert set(extras) == {"train_mrr", "train_recall", "encode_seconds", "search_seconds"}
    assert all(torch.is_tensor(extras[key]) and extras[key].dim() == 0 for key in ("train_mrr", "train_recall"))
    assert isinstance(extras["encode_seconds"], Interval) and isinstance(extras["search_seconds"], Interval)
    values = {key: float(value) for key, value in extras.items()}
    assert values["encode_seconds"] >= 0 and values["search_seconds"] >= 0
    assert 0 <= values["train_mrr"] <= values["train_recall"] <= 1

    # the reference: tokenize the batch, search, rank and weigh per query in numpy, as before
    tokens = encoder.tokenize([data.query_texts[q] for q in queries], params.query_max_length)
    embeddings = encoder(tokens["input_ids"], tokens["attention_mask"])
    retrieved = documents.search(embeddings, params.top_k)
    rows, gains = [data.positive_rows[q] for q in queries], [data.positive_gains[q] for q in queries]
    negative, padded_rows, _, ranks, valid = reference_pairs(retrieved.numpy(), rows, gains)
    weights = reference_weights(retrieved.numpy(), rows, gains, metric, params.metric_cutoff)
    expected = lambda_loss(
        documents.scores(embeddings, retrieved) / params.temperature,
        documents.scores(embeddings, torch.from_numpy(padded_rows)) / params.temperature,
        torch.from_numpy(weights).float(),
        torch.from_numpy(valid[:, :, None] & negative[:, None, :]),
    )
    assert torch.equal(loss, expected)
    first = ranks.min(axis=1)
    assert values["train_mrr"] == pytest.approx(np.where(first <= params.top_k, 1 / first, 0).mean())
    assert values["train_recall"] == pytest.approx((first <= params.top_k).mean())

    batch_loss(encoder, data, params, np.array(queries[::-1]), documents, device)
    assert data.resident is resident  # built once, then only indexed


def test_the_fixed_shape_step_gives_the_batch_loss(prepared, flat_index, tiny_model_dir):
    """The step a CUDA graph captures (every query padded to the longest of all, every positive list to the most)
    computes what the eager step computes on the batch's own widths."""
    from stages.ml.models import load_encoder
    from stages.train_adore import fixed_shape_step

    params = tiny_params(tiny_model_dir, batch_size=6, top_k=15, metric_cutoff=7, query_max_length=64)
    device = torch.device("cpu")
    documents, doc_ids = frozen_documents(params.pq_scoring, {"index": flat_index}, device)
    data = load_training_data(prepared, doc_ids)
    encoder = load_encoder(tiny_model_dir).eval()
    loss, extras = batch_loss(encoder, data, params, batch_queries(len(data.query_texts), params, 1, 2), documents, device)
    step = fixed_shape_step(data, params, documents, device)
    index = step.batch_index(1, 2)
    assert index.tolist() == batch_queries(len(data.query_texts), params, 1, 2) and index.dtype == np.int64
    fixed_loss, fixed_extras = step.loss_at(encoder, torch.from_numpy(index))
    assert data.resident.tokens.ids.shape[1] > int(data.resident.tokens.host_lengths[index].min())  # padding used
    assert float(fixed_loss) == pytest.approx(float(loss), rel=1e-5)
    assert set(fixed_extras) == {"train_mrr", "train_recall"}
    for key in fixed_extras:
        assert float(fixed_extras[key]) == pytest.approx(float(extras[key]))


def test_pq_scoring_reconstructed_scores_what_the_index_ranks_by(prepared, pq_index, tiny_model_dir, tmp_path):
    params = tiny_params(tiny_model_dir)
    documents, _ = frozen_documents(params.pq_scoring, {"index": pq_index}, torch.device("cpu"))
    assert documents.scoring == "reconstructed"
    queries = torch.randn(3, 32)
    _, index, _ = open_index(pq_index)
    expected_scores, expected_rows = faiss_search(index, queries.numpy(), 10)
    rows = documents.search(queries, 10)
    assert_same_topk(documents.scores(queries, rows).numpy(), rows.numpy(), expected_scores, expected_rows)
    summary = train_adore(params, {"prepared": prepared, "index": pq_index}, tmp_path)
    assert summary["scoring"] == "reconstructed" and summary["steps"] == 3


def test_pq_scoring_uncompressed_needs_the_shards(prepared, pq_index, encoded, tiny_model_dir, tmp_path):
    params = tiny_params(tiny_model_dir, pq_scoring="uncompressed", max_steps=2)
    with pytest.raises(ConfigError, match="no shard inputs were given") as error:
        train_adore(params, {"prepared": prepared, "index": pq_index}, tmp_path)
    assert "shard_0" in error.value.fix and "reconstructed" in error.value.fix
    documents, doc_ids = frozen_documents(params.pq_scoring, {"index": pq_index, "shard_0": encoded}, torch.device("cpu"))
    ids, vectors = read_embeddings([encoded / EMBEDDINGS])
    assert ids == doc_ids and torch.equal(documents.uncompressed, torch.from_numpy(vectors))
    summary = train_adore(params, {"prepared": prepared, "index": pq_index, "shard_0": encoded}, tmp_path)
    assert summary["scoring"] == "uncompressed" and summary["steps"] == 2


def test_params_are_checked(prepared, flat_index, tiny_model_dir, tmp_path):
    inputs = {"prepared": prepared, "index": flat_index}
    for changes, message in (
        ({"metric": "map"}, "unknown metric"),
        ({"pq_scoring": "exact"}, "unknown pq_scoring"),
        ({"metric_cutoff": 50}, "metric_cutoff"),
    ):
        with pytest.raises(ConfigError, match=message):
            train_adore(tiny_params(tiny_model_dir, **changes), inputs, tmp_path)


def test_cli_run_resumes_to_the_same_weights_and_retrieve_uses_it(prepared, flat_index, tiny_model_dir, tmp_path):
    """Killed and resumed with dev evaluation on: the best model by dev (kept in the checkpoint) is written."""
    params = tiny_params(
        tiny_model_dir, max_steps=6, checkpoint_every=2, warmup_fraction=0.3, metric="ndcg", eval_every=2
    )
    inputs = {"prepared": prepared, "index": flat_index}
    straight = tmp_path / "straight"
    straight.mkdir()
    train_adore(params, inputs, straight)

    out, _ = killed_then_resumed("train_adore", params, inputs, tmp_path / "results")
    assert_same_weights(straight, out)
    log = pd.read_parquet(out / "train_log.parquet")
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]
    assert log["loss"].tolist() == pytest.approx(pd.read_parquet(straight / "train_log.parquet")["loss"].tolist())
    for column in ("train_mrr", "train_recall", "encode_seconds", "search_seconds", "loss_seconds"):
        assert log[column].notna().all() and (log[column] >= 0).all(), column
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["scoring"] == "flat"
    dev = log.set_index("step")["dev_nDCG@10"]
    assert dev.dropna().index.tolist() == [2, 4, 6] and dev.dropna().between(0, 1).all()
    assert dev.tolist() == pytest.approx(pd.read_parquet(straight / "train_log.parquet")["dev_nDCG@10"].tolist(), nan_ok=True)
    best = dev.idxmax()
    assert summary["dev"] == {"measure": "nDCG@10", "best_step": best, "best_value": pytest.approx(dev[best])}
    assert {"encode_seconds_mean", "search_seconds_mean", "loss_seconds_mean", "search_share"} <= summary.keys()
    assert (out / "loss.png").is_file()

    run = tmp_path / "run"
    run.mkdir()
    retrieve(
        settings.params(RetrieveParams, "retrieve", "encoder", split="test", top_k=10, query_max_length=16),
        {"prepared": prepared, "index": flat_index, "model": out},
        run,
    )
    assert read_run(run)["query_id"].nunique() > 0


def test_missing_shards_error_reads_well_through_the_cli(prepared, pq_index, tiny_model_dir, tmp_path, capsys):
    from stages.train_adore import main

    params = dataclasses.asdict(tiny_params(tiny_model_dir, pq_scoring="uncompressed"))
    inputs = {"prepared": str(prepared), "index": str(pq_index)}
    out = tmp_path / "results" / "train_adore" / "x"
    assert main([str(out), "--params", json.dumps(params), "--inputs", json.dumps(inputs), "--no-check-key"]) == 2
    message = capsys.readouterr().err
    assert "error in stage train_adore" in message and "fix: pass the index's encode artifacts" in message
    assert not out.exists()


def test_flat_scores_are_what_the_search_ranks_by(flat_index):
    documents, _ = frozen_documents(tiny_params("unused").pq_scoring, {"index": flat_index}, torch.device("cpu"))
    queries = torch.randn(2, 32, requires_grad=True)
    rows = documents.search(queries, 5)
    scores = documents.scores(queries, rows)
    _, index, _ = open_index(flat_index)
    expected, expected_rows = faiss_search(index, queries.detach().numpy(), 5)
    assert_same_topk(scores.detach().numpy(), rows.numpy(), expected, expected_rows)
    scores.sum().backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0


