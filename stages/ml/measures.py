"""The measures registry: what `score`, the trainers' dev evaluation, the report and `hardneg compare` can measure.

A measure is named as the tables name it: ``NAMED``'s short names (nDCG@10, MRR@10, R@100, R@1000, MAP), or any
ir-measures name whose per-query values are averaged over queries (P@5, nDCG@20, RR@100, Judged@10, ...; not the
summed ones such as NumRet). Binary measures take the relevance level; an ir-measures name that sets its own ``rel``
keeps it. nDCG, RR, R, P and AP are computed in numpy (`stages.ml.rank_measures`: the same values as ir-measures'),
the other measures by ir-measures.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa

from ..core.errors import ConfigError
from . import rank_measures

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


def evaluate(run, qrels, measures: list[str], relevance_level: int) -> pd.DataFrame:
    """Per-query values (query_id, measure, value) for every judged query; a query the run misses counts 0. The run
    and the qrels are frames or Arrow tables (`evaluate_arrays`)."""
    query_ids, names, values = evaluate_arrays(run, qrels, measures, relevance_level)
    ids = np.asarray(query_ids.to_pylist(), dtype=object)
    return pd.DataFrame(
        {"query_id": np.repeat(ids, len(names)), "measure": np.tile(np.asarray(names, dtype=object), len(ids)),
         "value": values.ravel()}
    )  # fmt: skip


def evaluate_arrays(run, qrels, measures: list[str], relevance_level: int):
    """(judged query ids in the qrels' order, measure names, values: one row a query, one column a measure), of a
    run (query_id, doc_id, rank) and qrels (query_id, doc_id, relevance), each a frame or an Arrow table.

    Every measure sees the order the run states (its rank column). The registry's own measures (`rank_measures`)
    are computed in numpy; any other, and a run that ranks two documents of a query alike, by ir-measures, whose
    scores are minus the rank (its backends re-sort by score and break ties by doc id)."""
    run = run_table(run)
    names = list(dict.fromkeys(measures))
    objects = {name: ir_measure(name, relevance_level) for name in names}
    judgments = rank_measures.Judgments.of(qrels)
    values = np.zeros((len(judgments.query_ids), len(names)))
    natives = {name: rank_measures.native(measure) for name, measure in objects.items()}
    hits = None
    if any(natives.values()) and len(judgments.query_ids) and (judgments.relevance >= 0).all():
        hits = rank_measures.ranked_hits(run["query_id"], run["doc_id"], run["rank"].to_numpy(), judgments)
    for column, name in enumerate(names):
        if hits is not None and natives[name] is not None:
            values[:, column] = rank_measures.compute(natives[name], hits, judgments)
    others = [name for name in names if hits is None or natives[name] is None]
    if others:
        found = ir_measures_values(run, judgments, {name: objects[name] for name in others})
        values[:, [names.index(name) for name in others]] = found
    return judgments.query_ids, names, values


def run_table(run) -> pa.Table:
    """A run's query_id, doc_id and rank columns as an Arrow table (from a frame, or an Arrow table as it is)."""
    if isinstance(run, pa.Table):
        return run
    return pa.table({name: pa.array(run[name]) for name in ("query_id", "doc_id", "rank")})


def ir_measures_values(run: pa.Table, judgments: rank_measures.Judgments, objects: dict) -> np.ndarray:
    """Values of the ir-measures ``objects`` (name -> measure), one row a judged query; 0 where it gives none (a
    query the run misses)."""
    import ir_measures

    ranked: dict[str, dict[str, float]] = {}
    columns = (run[name].to_pylist() for name in ("query_id", "doc_id", "rank"))
    for query_id, doc_id, rank in zip(*columns):
        ranked.setdefault(query_id, {})[doc_id] = -float(rank)
    names: dict[str, list[str]] = {}  # two names may be one measure (MRR@10, RR@10)
    for name, measure in objects.items():
        names.setdefault(str(measure), []).append(name)
    row = {query_id: number for number, query_id in enumerate(judgments.query_ids.to_pylist())}
    column = {name: number for number, name in enumerate(objects)}
    values = np.zeros((len(row), len(column)))
    for metric in ir_measures.iter_calc(list(set(objects.values())), judgments.as_dict(), ranked):
        for name in names[str(metric.measure)]:
            values[row[metric.query_id], column[name]] = float(metric.value)
    return values
