"""STAR's loss on hand-made score matrices: pair masks, the paper's combination, the weighted one, the modes; and the
vectorised masks and index-selecting loss against the per-cell / boolean-mask versions they replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.ml.star_loss import loss_index, pair_masks, star_loss

# Three queries, one negative each. Columns: positives a, b, c of q0, q1, q2; then negatives n0 (q0), a (q1), n2 (q2).
# q0 is judged relevant to c too, so c (q2's positive) and a (q1's negative, q0's positive) are not q0's negatives.
JUDGED = [{"a", "c"}, {"b"}, {"c"}]
DOCS = ["a", "b", "c", "n0", "a", "n2"]
SCORES = torch.tensor(
    [
        [2.0, 0.5, 1.5, 1.0, 2.0, -1.0],
        [0.0, 1.0, 0.3, -0.5, 0.7, 0.2],
        [0.4, -0.2, 3.0, 0.1, 0.4, 2.5],
    ]
)
HARD_PAIRS = [(0, 3), (1, 4), (2, 5)]
RANDOM_PAIRS = [(0, 1), (0, 5), (1, 0), (1, 2), (1, 3), (1, 5), (2, 0), (2, 1), (2, 3), (2, 4)]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def pair_loss(q: int, column: int) -> float:
    return softplus(float(SCORES[q, column] - SCORES[q, q]))


def masks(hard_term=True, random_term=True, per_query=1, docs=DOCS):
    hard, random = pair_masks(JUDGED, docs, per_query, hard_term, random_term)
    return torch.from_numpy(hard), torch.from_numpy(random)


def pairs_of(mask: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(p) for p in torch.nonzero(mask).tolist()]


def test_masks_pair_own_negatives_and_drop_judged_documents():
    hard, random = masks()
    assert pairs_of(hard) == HARD_PAIRS
    assert pairs_of(random) == RANDOM_PAIRS
    assert not (hard & random).any()
    # judged-relevant documents anywhere in the batch are never negatives: q0 vs c (col 2) and vs a (col 4)
    assert not hard[0, [0, 2, 4]].any() and not random[0, [0, 2, 4]].any()


def test_a_judged_hard_negative_is_masked():
    hard, _ = pair_masks(JUDGED, ["a", "b", "c", "c", "x", "y"], 1, True, True)
    assert pairs_of(torch.from_numpy(hard)) == [(1, 4), (2, 5)]  # q0's "negative" c is judged relevant to q0


def test_paper_combination_is_the_mean_over_all_pairs():
    hard, random = masks()
    loss, extras = star_loss(SCORES, torch.arange(3), hard, random, random_weight=-1)
    every = [pair_loss(q, c) for q, c in HARD_PAIRS + RANDOM_PAIRS]
    assert float(loss) == pytest.approx(sum(every) / len(every), rel=1e-6)
    assert float(extras["hard_loss"]) == pytest.approx(np.mean([pair_loss(q, c) for q, c in HARD_PAIRS]), rel=1e-6)
    expected_random = np.mean([pair_loss(q, c) for q, c in RANDOM_PAIRS])
    assert float(extras["random_loss"]) == pytest.approx(expected_random, rel=1e-6)


def test_weighted_combination_matches_hand_computation():
    hard, random = masks()
    loss, _ = star_loss(SCORES, torch.arange(3), hard, random, random_weight=0.3)
    hard_mean = np.mean([pair_loss(q, c) for q, c in HARD_PAIRS])
    expected = hard_mean + 0.3 * np.mean([pair_loss(q, c) for q, c in RANDOM_PAIRS])
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_static_mode_has_only_the_hard_term():
    hard, random = masks(random_term=False)
    assert not random.any()
    loss, extras = star_loss(SCORES, torch.arange(3), hard, random)
    assert float(loss) == pytest.approx(np.mean([pair_loss(q, c) for q, c in HARD_PAIRS]), rel=1e-6)
    assert math.isnan(float(extras["random_loss"]))


def test_inbatch_mode_has_no_hard_term():
    hard, random = masks(hard_term=False, per_query=0, docs=DOCS[:3])
    in_batch = [(0, 1), (1, 0), (1, 2), (2, 0), (2, 1)]  # q0: a is its own positive, c is judged relevant
    assert not hard.any() and pairs_of(random) == in_batch
    loss, extras = star_loss(SCORES[:, :3], torch.arange(3), hard, random)
    assert math.isnan(float(extras["hard_loss"]))
    expected = np.mean([pair_loss(q, c) for q, c in in_batch])
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_softmax_loss_is_cross_entropy_of_the_positive():
    hard, random = masks()
    loss, _ = star_loss(SCORES, torch.arange(3), hard, random, loss="softmax")
    per_query = []
    for q in range(3):
        negatives = [c for p, c in HARD_PAIRS + RANDOM_PAIRS if p == q]
        logits = SCORES[q, [q] + negatives]
        per_query.append(float(-torch.log_softmax(logits, 0)[0]))
    assert float(loss) == pytest.approx(np.mean(per_query), rel=1e-6)


def test_gradient_raises_positives_and_lowers_negatives():
    hard, random = masks()
    scores = SCORES.clone().requires_grad_(True)
    loss, _ = star_loss(scores, torch.arange(3), hard, random)
    loss.backward()
    assert (scores.grad.diagonal() < 0).all()  # descending the loss raises every positive's score
    negatives = hard | random
    assert (scores.grad[negatives] > 0).all() and (scores.grad[~negatives & ~torch.eye(3, 6, dtype=bool)] == 0).all()


def test_no_pairs_gives_a_zero_loss_that_still_backpropagates():
    empty = torch.zeros(3, 6, dtype=bool)
    scores = SCORES.clone().requires_grad_(True)
    loss, extras = star_loss(scores, torch.arange(3), empty, empty)
    loss.backward()
    assert float(loss.detach()) == 0 and math.isnan(float(extras["hard_loss"]))


def test_extras_are_detached_0dim_tensors_on_the_scores_device():
    hard, random = masks(random_term=False)
    scores = SCORES.clone().requires_grad_(True)
    _, extras = star_loss(scores, torch.arange(3), hard, random)
    for value in extras.values():
        assert isinstance(value, torch.Tensor) and value.shape == () and not value.requires_grad
        assert value.dtype == scores.dtype and value.device == scores.device
    assert math.isnan(float(extras["random_loss"])) and math.isfinite(float(extras["hard_loss"]))


# --- the vectorised versions against the ones they replaced ---------------------------------------------------------


def reference_pair_masks(judged, doc_ids, per_query, hard_term, random_term):
    """pair_masks as it was: the relevant matrix by a per-cell set lookup."""
    count = len(judged)
    owner = np.concatenate([np.arange(count), np.repeat(np.arange(count), per_query)])
    own = owner[None, :] == np.arange(count)[:, None]
    negative = (np.arange(len(doc_ids)) >= count)[None, :]
    relevant = np.array([[doc in positives for doc in doc_ids] for positives in judged], dtype=bool)
    return own & negative & ~relevant & hard_term, ~own & ~relevant & random_term


def reference_star_loss(scores, positive_column, hard_mask, random_mask, random_weight=-1.0, loss="pairwise",
                        rows=slice(None)):
    """star_loss as it was: boolean-mask selection on the device, counts read back, float extras."""

    def share(values, count):
        return values.sum() / max(1, count)

    def listwise(mask):
        negatives = scores.masked_fill(~mask, float("-inf"))
        per_query = torch.logsumexp(torch.cat([positive, negatives], dim=1), dim=1) - positive.squeeze(1)
        return per_query[mask.any(dim=1)]

    positive = scores.gather(1, positive_column[:, None])
    hard_rows, random_rows = hard_mask[rows], random_mask[rows]
    if loss == "pairwise":
        pairs = F.softplus(scores - positive)
        hard, random = pairs[hard_rows], pairs[random_rows]
        combined = torch.cat([hard, random])
        counts = {"hard": int(hard_mask.sum()), "random": int(random_mask.sum())}
        counts["combined"] = counts["hard"] + counts["random"]
    else:
        hard, random, combined = listwise(hard_rows), listwise(random_rows), listwise(hard_rows | random_rows)
        masks = {"hard": hard_mask, "random": random_mask, "combined": hard_mask | random_mask}
        counts = {name: int(mask.any(dim=1).sum()) for name, mask in masks.items()}
    if random_weight < 0:
        total = share(combined, counts["combined"])
    else:
        total = share(hard, counts["hard"]) + random_weight * share(random, counts["random"])
    extras = {
        f"{term}_loss": float(share(values.detach(), counts[term])) if counts[term] else float("nan")
        for term, values in (("hard", hard), ("random", random))
    }
    return total, extras


def random_batch(rng: np.random.Generator, queries: int, per_query: int):
    """Judged sets and a batch layout drawn from a small pool of ids: documents recur in the batch (a negative that is
    another query's positive, the same negative twice), and queries are judged relevant to other queries' documents,
    to documents outside the batch, or (one in a while) to more documents than the batch holds, or to none."""
    pool = [f"d{i}" for i in range(max(3, queries * (1 + per_query) // 2))]
    judged = []
    for _ in range(queries):
        size = int(rng.choice([0, 1, 2, 3, -1], p=[0.1, 0.4, 0.3, 0.15, 0.05]))
        chosen = set(pool) | {"outside"} if size < 0 else {pool[i] for i in rng.integers(len(pool), size=size)}
        judged.append(chosen)
    positives = [str(rng.choice(sorted(j))) if j and rng.random() < 0.9 else str(rng.choice(pool)) for j in judged]
    negatives = [str(d) for d in rng.choice(pool, queries * per_query)]
    return judged, positives + negatives


@pytest.mark.parametrize("seed", range(20))
def test_pair_masks_match_the_per_cell_reference(seed):
    rng = np.random.default_rng(seed)
    queries, per_query = int(rng.integers(1, 12)), int(rng.integers(0, 5))
    judged, docs = random_batch(rng, queries, per_query)
    for hard_term, random_term in [(True, True), (True, False), (False, True), (False, False)]:
        expected = reference_pair_masks(judged, docs, per_query, hard_term, random_term)
        actual = pair_masks(judged, docs, per_query, hard_term, random_term)
        for want, got in zip(expected, actual):
            assert got.dtype == bool and got.shape == want.shape and np.array_equal(got, want)


def test_pair_masks_match_the_reference_at_the_papers_batch_size():
    rng = np.random.default_rng(0)
    judged, docs = random_batch(rng, 256, 5)
    assert len(set(docs)) < len(docs)  # documents recur
    assert any(doc in judged[q] for q in range(256) for doc in docs[:q] + docs[q + 1 : 256])  # others' positives
    expected = reference_pair_masks(judged, docs, 5, True, True)
    assert all(np.array_equal(e, a) for e, a in zip(expected, pair_masks(judged, docs, 5, True, True)))


@pytest.mark.parametrize("loss", ["pairwise", "softmax"])
@pytest.mark.parametrize("random_weight", [-1.0, 0.3])
@pytest.mark.parametrize("rows", [slice(None), slice(0, 3), slice(3, 7)])
def test_star_loss_is_bitwise_the_boolean_mask_reference(loss, random_weight, rows):
    """Index selection (host index, or made from the masks) gives the same loss, gradient and extras, bit for bit."""
    rng = np.random.default_rng([len(loss), int(random_weight * 10) + 10, rows.start or 0])
    for trial in range(5):
        per_query = int(rng.integers(0, 4))
        judged, docs = random_batch(rng, 7, per_query)
        hard_term, random_term = bool(trial % 3), bool(trial % 2 == 0 or per_query == 0)
        hard_np, random_np = pair_masks(judged, docs, per_query, hard_term, random_term)
        hard, random = torch.from_numpy(hard_np), torch.from_numpy(random_np)
        local = range(7)[rows]
        base = torch.from_numpy(rng.normal(size=(len(local), len(docs))).astype(np.float32) * 3)
        columns = torch.arange(local.start, local.stop)
        scores = base.clone().requires_grad_(True)
        want_loss, want_extras = reference_star_loss(scores, columns, hard, random, random_weight, loss, rows)
        want_loss.backward()
        want_grad = scores.grad
        for index in (None, loss_index(hard_np, random_np, rows, loss)):
            scores = base.clone().requires_grad_(True)
            got_loss, got_extras = star_loss(scores, columns, hard, random, random_weight, loss, rows, index=index)
            got_loss.backward()
            assert torch.equal(got_loss.detach(), want_loss.detach()) and torch.equal(scores.grad, want_grad)
            assert got_extras.keys() == want_extras.keys()
            for name, value in want_extras.items():
                assert float(got_extras[name]) == value or (math.isnan(value) and math.isnan(float(got_extras[name])))


@pytest.mark.parametrize("loss", ["pairwise", "softmax"])
def test_star_loss_with_a_host_index_never_reads_the_device(loss):
    """On the meta device no value can be read back (int(), .item(), boolean-mask indexing all fail there): with the
    index made on the host, the loss, its extras and its backward still run, as they must without a sync on a GPU."""
    hard, random = pair_masks(JUDGED, DOCS, 1, True, True)
    index = loss_index(hard, random, slice(None), loss).to(torch.device("meta"))
    scores = torch.empty(3, 6, device="meta", requires_grad=True)
    meta = [torch.from_numpy(m).to("meta") for m in (hard, random)]
    total, extras = star_loss(scores, torch.arange(3, device="meta"), *meta, loss=loss, index=index)
    total.backward()
    assert total.shape == () and all(v.shape == () and v.is_meta for v in extras.values())
    with pytest.raises(Exception):  # the check above means something: without the index, the masks are read back
        star_loss(torch.empty(3, 6, device="meta"), torch.arange(3, device="meta"), *meta, loss=loss)


def test_loss_index_counts_the_whole_batch_and_selects_the_rows():
    hard, random = pair_masks(JUDGED, DOCS, 1, True, True)
    pairwise = loss_index(hard, random, slice(1, 3), "pairwise")
    assert pairwise.counts == {"hard": 3, "random": 10, "combined": 13}
    rows, columns = pairwise.selections["hard"]
    assert list(zip(rows.tolist(), columns.tolist())) == [(0, 4), (1, 5)]  # rows local to the slice
    softmax = loss_index(hard, random, slice(1, 3), "softmax")
    assert softmax.counts == {"hard": 3, "random": 3, "combined": 3}
    assert [t.tolist() for (t,) in softmax.selections.values()] == [[0, 1]] * 3
