"""stages.ml.negative_samplers: what each sampler draws, and that the plan asks for mined negatives exactly when the
sampler says it needs them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from stages.core.errors import DataError
from stages.ml.negative_samplers import SAMPLERS, draw_from_corpus, draw_mined, random_documents


@dataclass
class Candidates:
    mined: list[list[str]] | None
    judged: list[set[str]]
    doc_ids: list[str]


CORPUS = [f"d{i}" for i in range(20)]
DATA = Candidates(mined=[["d3", "d4", "d5"], ["d9"]], judged=[{"d0", "d1"}, {"d2"}], doc_ids=CORPUS)


def test_mined_draws_come_from_the_query_pool_and_repeat_only_when_it_is_short():
    rng = np.random.default_rng(0)
    drawn = draw_mined(DATA, 0, 3, rng)
    assert sorted(drawn) == ["d3", "d4", "d5"]  # without replacement: the whole pool
    assert draw_mined(DATA, 1, 4, rng) == ["d9"] * 4


def test_corpus_draws_are_never_judged_and_are_seeded():
    drawn = draw_from_corpus(DATA, 0, 50, np.random.default_rng(1))
    assert len(drawn) == 50 and not set(drawn) & DATA.judged[0] and set(drawn) <= set(CORPUS)
    assert drawn == draw_from_corpus(DATA, 0, 50, np.random.default_rng(1))
    with pytest.raises(DataError, match="every corpus document is judged"):
        random_documents(["d0", "d1"], {"d0", "d1"}, 1, np.random.default_rng(0))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_draws_only_from_what_it_declares(name):
    sampler = SAMPLERS[name]
    if sampler.draw is None:  # no negatives of its own: only the in-batch term can use the other documents
        assert not sampler.hard_term and sampler.random_term and not sampler.needs_mined_negatives
        return
    data = Candidates(DATA.mined if sampler.needs_mined_negatives else None, DATA.judged, CORPUS)
    drawn = sampler.draw(data, 0, 5, np.random.default_rng(2))
    assert len(drawn) == 5 and not set(drawn) & DATA.judged[0]
    # what it may draw: the whole corpus only if it says so (the host side tokenizes that ahead), else the mined list
    assert set(drawn) <= (set(CORPUS) if sampler.draws_from_corpus else set(DATA.mined[0]))
