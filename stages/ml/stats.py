"""Statistics over per-query metric values: bootstrap confidence intervals, paired significance tests and Holm's
correction for comparing several variants with one reference.

CLI: ``python -m stages.ml.stats SCORE_A SCORE_B [--measure nDCG@10]`` compares two `score` artifacts on the same queries.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.artifacts import PER_QUERY
from ..core.errors import DataError, PipelineError

DESCRIPTION = """Paired randomization test between two `score` artifacts scored on the same queries: prints, as JSON,
the mean of each on one measure, their difference and the two-sided p-value."""
EXAMPLE = """example:
  python -m stages.ml.stats results/runs/star/seed-1/score-test results/runs/bm25/score-test --measure MRR@10

A score artifact is a results/score/<key> folder (or a results/runs/<experiment>/score-<split> link to one) with
per_query.parquet. Exit status 2: a wrong path, a measure the artifacts lack, or different queries."""


def bootstrap_ci(values: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over queries."""
    return bootstrap_cis(np.asarray(values, dtype=np.float64)[:, None], samples, seed, level)[0]


def bootstrap_cis(
    columns: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> list[tuple[float, float]]:
    """`bootstrap_ci` of each column of ``columns`` (one row a query), the same resampled queries for all: each
    interval is the one `bootstrap_ci` gives for its column alone."""
    columns = np.asarray(columns, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(columns), size=(samples, len(columns)))
    tail = (1 - level) / 2 * 100
    intervals = []
    for column in columns.T:
        means = column[draws].mean(axis=1)
        intervals.append((float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))))
    return intervals


def seed_averaged(frames: list[pd.DataFrame], measure: str) -> pd.Series:
    """Per-query values of ``measure`` averaged over score artifacts (one a seed), indexed by query id, in the first
    artifact's query order (the order the score stage bootstraps in, so that one artifact gives its own interval)."""
    series = [f[f["measure"] == measure].set_index("query_id")["value"] for f in frames]
    if any(set(s.index) != set(series[0].index) for s in series) or series[0].empty:
        fix = "the seeds of one variant must be scored on the same split and measures"
        raise DataError(f"the score artifacts do not have the same queries for {measure}", fix=fix)
    return pd.concat(series, axis=1).mean(axis=1).reindex(series[0].index)


def query_interval(frames: list[pd.DataFrame], measure: str, samples: int, seed: int) -> tuple[float, float]:
    """The 95% bootstrap interval of a measure over queries: of one score artifact's values (what the score stage
    writes), or of the seed-averaged values of several."""
    return bootstrap_ci(seed_averaged(frames, measure).to_numpy(), samples, seed)


PERMUTATIONS = 10000
"""Random sign flips of the paired test: its smallest p-value is 1 / (PERMUTATIONS + 1)."""


def paired_randomization_test(a: np.ndarray, b: np.ndarray, samples: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided p-value of mean(a) - mean(b) under random sign flips of the per-query differences."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(samples, len(diff)))
    extreme = (np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12).sum()
    return float((extreme + 1) / (samples + 1))


def p_floor(samples: int = PERMUTATIONS) -> float:
    """The smallest p-value `paired_randomization_test` gives with ``samples`` sign flips."""
    return 1 / (samples + 1)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; each at most 1), in the order given."""
    order = np.argsort(p_values, kind="stable")
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_values(per_query_a: pd.DataFrame, per_query_b: pd.DataFrame, measure: str) -> tuple[np.ndarray, np.ndarray]:
    a = per_query_a[per_query_a["measure"] == measure].set_index("query_id")["value"]
    b = per_query_b[per_query_b["measure"] == measure].set_index("query_id")["value"]
    if a.empty or set(a.index) != set(b.index):
        raise DataError(
            f"the two runs are not scored on the same queries for {measure} ({len(a)} vs {len(b)} queries)",
            fix="compare score artifacts of the same split and measure",
        )
    return a.sort_index().to_numpy(), b.reindex(a.sort_index().index).to_numpy()


def read_scores(score: Path) -> pd.DataFrame:
    """The per-query values of a score artifact."""
    from ..core.tables import _read

    if not (Path(score) / PER_QUERY).is_file():
        what = "no such folder" if not Path(score).exists() else f"not a score artifact (no {PER_QUERY})"
        fix = "give a score artifact: results/score/<key> or results/runs/<experiment>/score-<split>"
        raise DataError(what, path=score, fix=fix)
    return _read(Path(score) / PER_QUERY)


def check_measure(measure: str, scores: dict[Path, pd.DataFrame]) -> None:
    """``measure`` must be scored in every artifact; the error lists the measures they have in common."""
    missing = [path for path, frame in scores.items() if measure not in set(frame["measure"])]
    if missing:
        common = sorted(set.intersection(*(set(frame["measure"]) for frame in scores.values())))
        fix = f"use --measure with one of {common}"
        raise DataError(f"measure {measure!r} is not among the scored measures", path=missing[0], fix=fix)


def compare(score_a: Path, score_b: Path, measure: str, samples: int = PERMUTATIONS, seed: int = 0) -> dict:
    scores = {Path(score_a): read_scores(score_a), Path(score_b): read_scores(score_b)}
    check_measure(measure, scores)
    a, b = paired_values(*scores.values(), measure)
    return {
        "measure": measure,
        "queries": len(a),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "difference": float(a.mean() - b.mean()),
        "p_value": paired_randomization_test(a, b, samples, seed),
        "test": f"paired randomization test, two-sided, {samples} permutations, seed {seed}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.ml.stats",
        description=DESCRIPTION,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("score_a", type=Path, help="a score artifact folder (A)")
    parser.add_argument("score_b", type=Path, help="another score artifact of the same split (B)")
    parser.add_argument("--measure", default="nDCG@10", help="a measure both were scored on (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=PERMUTATIONS, help="random sign flips (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(compare(args.score_a, args.score_b, args.measure, args.samples), indent=2))
    except PipelineError as error:
        print(f"error: {error.render()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
