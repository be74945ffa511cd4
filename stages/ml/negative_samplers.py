"""The negative samplers of `train_star` (its ``negatives`` setting): how a step draws each query's negatives, which
loss terms the mode uses, and which inputs it needs. The plan reads ``needs_mined_negatives`` from here too.

A new sampler is one entry of `SAMPLERS` (and the schema's enum) plus its test. No heavy imports: the plan loads this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from ..core.errors import DataError

if TYPE_CHECKING:
    import numpy as np


class Candidates(Protocol):
    """What a sampler draws from (`train_star.TrainingData`)."""

    mined: list[list[str]] | None
    """Per query, its mined negatives in rank order (only for samplers that need them)."""
    judged: list[set[str]]
    """Per query, its judged positives (never its negatives)."""
    doc_ids: Sequence[str]
    """The corpus."""


# (candidates, query row, count, rng) -> ``count`` negative doc ids of that query
Draw = Callable[[Candidates, int, int, "np.random.Generator"], list[str]]


@dataclass(frozen=True)
class NegativeSampler:
    name: str
    draw: Draw | None
    """Each query's own negatives (``hard_negatives_per_query`` of them); None: it has none."""
    hard_term: bool
    """The loss pairs each query with its own negatives."""
    random_term: bool
    """The loss pairs each query with every other document of the batch (in-batch random negatives)."""
    needs_mined_negatives: bool = False
    """It reads the ``negatives`` input (a mine_negatives artifact)."""
    draws_from_corpus: bool = False
    """Any corpus document may be drawn (so the host side tokenizes the whole corpus ahead)."""


def draw_mined(data: Candidates, query: int, count: int, rng: np.random.Generator) -> list[str]:
    """``count`` of the query's mined negatives, uniformly (with replacement when it has fewer)."""
    pool = data.mined[query]
    return [pool[i] for i in rng.choice(len(pool), count, replace=len(pool) < count)]


def draw_from_corpus(data: Candidates, query: int, count: int, rng: np.random.Generator) -> list[str]:
    """``count`` documents drawn uniformly from the corpus, none judged relevant to the query."""
    return random_documents(data.doc_ids, data.judged[query], count, rng)


def random_documents(doc_ids: Sequence[str], judged: set[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` documents drawn uniformly from ``doc_ids``, none in ``judged``."""
    if len(judged) >= len(doc_ids):
        raise DataError("every corpus document is judged relevant to a query; no random negatives to draw")
    drawn: list[str] = []
    while len(drawn) < count:
        doc = str(doc_ids[rng.integers(len(doc_ids))])
        if doc not in judged:
            drawn.append(doc)
    return drawn


SAMPLERS: dict[str, NegativeSampler] = {
    sampler.name: sampler
    for sampler in (
        # STAR: static hard negatives (mined) + random in-batch negatives
        NegativeSampler("star", draw_mined, hard_term=True, random_term=True, needs_mined_negatives=True),
        # the hard term only
        NegativeSampler("static", draw_mined, hard_term=True, random_term=False, needs_mined_negatives=True),
        # Inbatch-Neg: no negatives of its own, the other queries' positives
        NegativeSampler("inbatch", None, hard_term=False, random_term=True),
        # Rand-Neg: uniform corpus negatives (the paper's code scores them only against the batch's random documents)
        NegativeSampler("randneg", draw_from_corpus, hard_term=True, random_term=True, draws_from_corpus=True),
    )
}
