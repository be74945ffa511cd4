"""The measures registry: what `score`, the trainers' dev evaluation, the report and `hardneg compare` can measure.

A measure is named as the tables name it: ``NAMED``'s short names (nDCG@10, MRR@10, R@100, R@1000, MAP), or any
ir-measures name whose per-query values are averaged over queries (P@5, nDCG@20, RR@100, Judged@10, ...; not the
summed ones such as NumRet). Binary measures take the relevance level; an ir-measures name that sets its own ``rel``
keeps it.
"""

from __future__ import annotations

from functools import lru_cache

import pandas as pd

from ..core.errors import ConfigError
from ..core.tables import qrels_dict

NAMED = {"nDCG@10": "nDCG@10", "MRR@10": "RR@10", "R@100": "R@100", "R@1000": "R@1000", "MAP": "AP"}
"""Short names -> ir-measures names (without the relevance level)."""
DEEPEST = 1000
"""Documents a run must hold for a measure without a cutoff (MAP)."""
FIX = f"use one of {list(NAMED)} or an ir-measures name averaged over queries (e.g. P@5, nDCG@20)"


@lru_cache(maxsize=None)
def _parsed(name: str):
    import ir_measures

    try:
        measure = ir_measures.parse_measure(NAMED.get(name, name))
    except (NameError, ValueError, TypeError, SyntaxError) as error:
        raise ConfigError(f"unknown measure {name!r} ({error})", fix=FIX) from None
    if type(measure.aggregator()).__name__ != "MeanAgg":
        raise ConfigError(f"measure {name!r} is not averaged over queries, so it has no per-query mean", fix=FIX)
    return measure


def check(name: str) -> None:
    """A ConfigError unless ``name`` is a measure of the registry."""
    _parsed(name)


def ir_measure(name: str, relevance_level: int = 1):
    """The ir-measures measure of ``name`` at ``relevance_level`` (binary measures only; a given ``rel`` is kept)."""
    measure = _parsed(name)
    if relevance_level != 1 and "rel" in measure.SUPPORTED_PARAMS and "rel" not in measure.params:
        return measure(rel=relevance_level)
    return measure


def depth(name: str) -> int:
    """Documents a run must hold per query to compute ``name``: its cutoff, else `DEEPEST`."""
    return _parsed(name).params.get("cutoff") or DEEPEST


def evaluate(run: pd.DataFrame, qrels: pd.DataFrame, measures: list[str], relevance_level: int) -> pd.DataFrame:
    """Per-query values (query_id, measure, value) for every judged query; a query the run misses counts 0.

    Every measure sees the order the run states (its rank column): the scores given to ir-measures are minus the
    rank, since its backends re-sort by score and break ties by doc id."""
    import ir_measures

    judged = qrels_dict(qrels)
    ranked: dict[str, dict[str, float]] = {}
    columns = (run[name].tolist() for name in ("query_id", "doc_id", "rank"))  # lists: 3x faster than itertuples
    for query_id, doc_id, rank in zip(*columns):
        ranked.setdefault(query_id, {})[doc_id] = -float(rank)
    objects = {name: ir_measure(name, relevance_level) for name in measures}
    names: dict[str, list[str]] = {}  # two names may be one measure (MRR@10, RR@10)
    for name, measure in objects.items():
        names.setdefault(str(measure), []).append(name)
    values = {(q, name): 0.0 for q in judged for name in measures}
    for metric in ir_measures.iter_calc(list(set(objects.values())), judged, ranked):
        for name in names[str(metric.measure)]:
            values[(metric.query_id, name)] = float(metric.value)
    return pd.DataFrame([(q, m, v) for (q, m), v in values.items()], columns=["query_id", "measure", "value"])
