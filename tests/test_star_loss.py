"""STAR's loss on hand-made score matrices: pair masks, the paper's combination, the weighted one, the modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.train_star import pair_masks, star_loss

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
    assert extras["hard_loss"] == pytest.approx(np.mean([pair_loss(q, c) for q, c in HARD_PAIRS]), rel=1e-6)
    assert extras["random_loss"] == pytest.approx(np.mean([pair_loss(q, c) for q, c in RANDOM_PAIRS]), rel=1e-6)


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
    assert math.isnan(extras["random_loss"])


def test_inbatch_mode_has_no_hard_term():
    hard, random = masks(hard_term=False, per_query=0, docs=DOCS[:3])
    in_batch = [(0, 1), (1, 0), (1, 2), (2, 0), (2, 1)]  # q0: a is its own positive, c is judged relevant
    assert not hard.any() and pairs_of(random) == in_batch
    loss, extras = star_loss(SCORES[:, :3], torch.arange(3), hard, random)
    assert math.isnan(extras["hard_loss"])
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
    assert float(loss.detach()) == 0 and math.isnan(extras["hard_loss"])
