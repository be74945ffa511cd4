"""`hardneg compare`: any runs (TREC run files, run or score artifacts) on the same judgments, in the style of ranx's
``compare``: each run's mean of each measure, paired randomization tests between every two runs, and p-values
corrected for the comparisons of a measure (Holm). A run is named by its TREC tag: the system that made it."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..core.errors import DataError
from ..core.tables import read_qrels, read_run
from ..core.artifacts import QRELS, RUN_PARQUET
from ..ml.stats import PERMUTATIONS, bootstrap_ci, check_measure, holm, paired_randomization_test
from ..core.artifacts import PER_QUERY
from ..ml.stats import paired_values, read_scores
from ..ml.measures import evaluate

DEFAULT_MEASURES = ["nDCG@10", "MRR@10", "R@100"]
SUPERSCRIPTS = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ᵃᵇᶜᵈᵉᶠᵍʰⁱʲᵏˡᵐⁿᵒᵖqʳˢᵗᵘᵛʷˣʸᶻ")


@dataclass
class Judgments:
    """The qrels to score runs against: a TREC qrels file, or a prepare artifact's split."""

    path: Path | None
    split: str = "test"
    relevance_level: int = 1

    def frame(self) -> pd.DataFrame:
        if self.path is None:
            raise DataError(
                "runs to score but no judgments", fix="give --qrels (a TREC qrels file or a prepare artifact)"
            )
        if (self.path / QRELS).is_file():
            return read_qrels(self.path, self.split)
        if not self.path.is_file():
            raise DataError("no judgments here", path=self.path, fix="give a TREC qrels file or a prepare artifact")
        qrels = pd.read_csv(
            self.path, sep=r"\s+", header=None, names=["query_id", "iteration", "doc_id", "relevance"], dtype=str
        )
        return qrels.astype({"relevance": int})


def read_trec_run(path: Path) -> tuple[pd.DataFrame, str]:
    """A TREC run file as a run frame and its tag: ranks by score, ties by doc id descending (trec_eval's order)."""
    columns = ["query_id", "q0", "doc_id", "rank", "score", "tag"]
    run = pd.read_csv(path, sep=r"\s+", header=None, names=columns, dtype={"query_id": str, "doc_id": str, "tag": str})
    run = run.sort_values(["query_id", "score", "doc_id"], ascending=[True, False, False], kind="stable")
    run["rank"] = run.groupby("query_id").cumcount() + 1
    tags = run["tag"].unique()
    return run, tags[0] if len(tags) == 1 else Path(path).stem


def run_tag(experiment: str) -> str:
    """The TREC tag of an experiment's runs (``star/seed-1`` -> ``star_seed-1``): the system, not the stage."""
    return experiment.replace("/", "_")


def pointer_name(artifact: Path) -> str | None:
    """The tag of the experiment whose pointer ``artifact`` is (results/runs/<experiment>/<role>), if it is one.
    Artifacts shared between experiments keep one key; the name comes from the pointer."""
    parts = Path(artifact).parts
    return run_tag("/".join(parts[len(parts) - parts[::-1].index("runs") : -1])) if "runs" in parts[:-2] else None


def per_query(source: Path, judgments: Judgments, measures: list[str]) -> tuple[str, pd.DataFrame]:
    """A run's name and per-query values (query_id, measure, value)."""
    source = Path(source)
    if (source / PER_QUERY).is_file():
        scores = read_scores(source)
        for measure in measures:
            check_measure(measure, {source: scores})
        return pointer_name(source) or source.name, scores
    if (source / RUN_PARQUET).is_file():
        run, name = read_run(source), pointer_name(source) or source.name
    elif source.is_file():
        run, tag = read_trec_run(source)
        name = pointer_name(source.parent) or tag  # a pointer's run.trec: its tag is the stage's
    else:
        fix = "give TREC run files, run artifacts (run.parquet) or score artifacts (per_query.parquet)"
        raise DataError("not a run", path=source, fix=fix)
    return name, evaluate(run, judgments.frame(), measures, judgments.relevance_level)


def compare(
    sources: list[Path], judgments: Judgments, measures: list[str], samples: int = PERMUTATIONS, seed: int = 0
) -> dict:
    """Means, and for every two runs and measure the paired test's p-value and its Holm correction over the pairs."""
    runs = dict(per_query(source, judgments, measures) for source in sources)
    if len(runs) < len(sources):
        raise DataError("two runs have the same name (TREC tag)", fix="give each run its own tag")
    names, pairs = list(runs), list(itertools.combinations(runs, 2))
    result = {"runs": names, "measures": measures, "means": {n: {} for n in names}, "intervals": {n: {} for n in names}}
    result["tests"] = []
    for measure in measures:
        for name in names:
            values = runs[name].loc[runs[name]["measure"] == measure, "value"].to_numpy()
            result["means"][name][measure] = float(values.mean())
            result["intervals"][name][measure] = bootstrap_ci(values, seed=seed)  # 95%, over queries
        p_values = [
            paired_randomization_test(*paired_values(runs[a], runs[b], measure), samples, seed) for a, b in pairs
        ]
        for (a, b), p, corrected in zip(pairs, p_values, holm(p_values)):
            result["tests"].append({"measure": measure, "a": a, "b": b, "p_value": p, "p_holm": corrected})
    result["test"] = f"paired randomization test, two-sided, {samples} permutations, seed {seed}; Holm over the pairs"
    return result


def table(result: dict, alpha: float = 0.05) -> str:
    """ranx's table: a run's superscripts are the runs it beats (Holm-corrected p < alpha)."""
    letters = dict(zip(result["runs"], "abcdefghijklmnopqrstuvwxyz"))
    beats = {(name, m): "" for name in result["runs"] for m in result["measures"]}
    for test in result["tests"]:
        if test["p_holm"] < alpha:
            a, b, m = test["a"], test["b"], test["measure"]
            winner, loser = (a, b) if result["means"][a][m] > result["means"][b][m] else (b, a)
            beats[(winner, m)] += letters[loser]
    width = max(len(name) for name in result["runs"]) + 2
    lines = ["#  " + "Model".ljust(width) + "".join(m.ljust(14) for m in result["measures"])]
    for name in result["runs"]:
        cells = (
            f"{result['means'][name][m]:.4f}{beats[(name, m)].translate(SUPERSCRIPTS)}" for m in result["measures"]
        )
        lines.append(f"{letters[name]}  {name.ljust(width)}" + "".join(cell.ljust(14) for cell in cells))
    return "\n".join(lines + [f"superscripts: better than that run, Holm-corrected p < {alpha} ({result['test']})"])


def render(result: dict, as_json: bool) -> str:
    return json.dumps(result, indent=2) if as_json else table(result)
