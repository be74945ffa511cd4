"""`hardneg compare`: any runs (TREC run files, run or score artifacts) on the same judgments, in the style of ranx's
``compare``: each run's mean of each measure, paired randomization tests between every two runs, and p-values
corrected for the comparisons of a measure (Holm). A run is named by its TREC tag: the system that made it (a run
without tags: its file). Runs it cannot score correctly are refused, naming the file and line."""

from __future__ import annotations

import csv
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import parquet_io
from ..core.errors import ConfigError, DataError
from ..core.folder_readers import read_judgments_file
from ..core.tables import read_qrels, read_run
from ..core.artifacts import QRELS, RUN_PARQUET
from ..ml.stats import PERMUTATIONS, bootstrap_ci, check_measure, holm, paired_randomization_test
from ..core.artifacts import PER_QUERY
from ..ml.stats import paired_values, read_scores
from ..ml.measures import check, evaluate

DEFAULT_MEASURES = ["nDCG@10", "MRR@10", "R@100"]
SUPERSCRIPTS = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ᵃᵇᶜᵈᵉᶠᵍʰⁱʲᵏˡᵐⁿᵒᵖqʳˢᵗᵘᵛʷˣʸᶻ")
SAMPLES = (20, 1_000_000)
"""The sign flips `compare` takes: at least 20, so that a p-value can fall below 0.05 (its floor is 1 / (samples + 1));
at most a million (each is a row of the per-query differences in memory)."""
RUN_COLUMNS = ["query_id", "q0", "doc_id", "rank", "score", "tag"]
RUN_FIX = "each line: query_id Q0 doc_id rank score tag (a TREC run), separated by whitespace"
QRELS_FIX = "give a TREC qrels file (query_id 0 doc_id relevance) or BEIR's qrels/<split>.tsv, or a prepare artifact"


@dataclass
class Judgments:
    """The qrels to score runs against: a TREC qrels file (or BEIR's TSV, header optional), or a prepare artifact's
    split. Read once, and refused when it judges nothing or nothing reaches ``relevance_level``."""

    path: Path | None
    split: str = "test"
    relevance_level: int = 1
    _frame: pd.DataFrame | None = field(default=None, init=False, repr=False)

    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = self._checked(self._read())
        return self._frame

    def where(self) -> str:
        """The qrels in messages: the file, or the artifact's table and split."""
        if self.path is not None and (self.path / QRELS).is_file():
            return f"{self.path / QRELS} (split {self.split!r})"
        return str(self.path)

    def _read(self) -> pd.DataFrame:
        if self.path is None:
            raise DataError(
                "runs to score but no judgments", fix="give --qrels (a TREC qrels file or a prepare artifact)"
            )
        if (self.path / QRELS).is_file():
            qrels = read_qrels(self.path, self.split)
            if qrels.empty:
                splits = sorted(parquet_io.read_table(self.path / QRELS, columns=["split"]).column("split").unique().to_pylist())
                fix = f"give --split one of {splits}"
                message = f"no judgments of split {self.split!r}; splits: {splits}"
                raise DataError(message, path=self.path / QRELS, fix=fix)
            return qrels
        if not self.path.is_file():
            raise DataError("no judgments here", path=self.path, fix=QRELS_FIX)
        return read_judgments_file(self.path)

    def _checked(self, qrels: pd.DataFrame) -> pd.DataFrame:
        if qrels.empty:
            raise DataError("no judgments in the file", path=self.path, fix=QRELS_FIX)
        highest = int(qrels["relevance"].max())
        if highest < self.relevance_level:
            raise DataError(
                f"no judgment reaches relevance level {self.relevance_level} (the highest is {highest}): "
                "every measure would be 0",
                path=self.where(),
                fix="lower --relevance-level (default 1), or check the qrels",
            )
        return qrels


def read_trec_run(path: Path) -> tuple[pd.DataFrame, str]:
    """A TREC run file as a run frame and its tag: ranks by score, ties by doc id descending (trec_eval's order). A run
    whose lines all lack the tag (5 columns) is named after the file. An empty file, lines of other lengths, scores
    that are not numbers (NaN included) and a document ranked twice for a query are refused with the line."""
    run = _run_lines(Path(path))
    tagged = _tagged(run, path)
    scores = pd.to_numeric(run["score"], errors="coerce")
    if scores.isna().any():
        bad = run[scores.isna()].iloc[0]
        fix = "give every line a number as its score (a NaN cannot be ranked)"
        raise DataError(f"score {bad['score']!r} is not a number", path=path, line=int(bad["line"]), fix=fix)
    run = run.assign(score=scores.astype(float))
    _refuse_repeats(run, path)
    run = run.sort_values(["query_id", "score", "doc_id"], ascending=[True, False, False], kind="stable")
    run["rank"] = run.groupby("query_id").cumcount() + 1
    tags = run["tag"].unique() if tagged else []
    return run, tags[0] if len(tags) == 1 else Path(path).stem


def _run_lines(path: Path) -> pd.DataFrame:
    """The non-blank lines of a run file as text columns (missing ones empty) and their line numbers."""
    try:
        lines = pd.read_csv(
            path, sep=r"\s+", header=None, names=RUN_COLUMNS, dtype=str, na_filter=False, skip_blank_lines=False,
            quoting=csv.QUOTE_NONE,
        )  # fmt: skip
    except pd.errors.ParserError as error:  # more than six columns
        found = re.search(r"in line (\d+), saw (\d+)", str(error))
        line, count = (int(found[1]), found[2]) if found else (None, "more")
        raise DataError(f"expected 6 columns, found {count} columns", path=path, line=line, fix=RUN_FIX) from None
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text ({error.reason})", path=path, fix="give a TREC run file") from None
    lines["line"] = range(1, len(lines) + 1)
    lines = lines[(lines[RUN_COLUMNS] != "").any(axis=1)]
    if lines.empty:
        raise DataError("empty run file: it ranks no documents", path=path, fix=RUN_FIX)
    return lines


def _tagged(run: pd.DataFrame, path: Path) -> bool:
    """Whether the lines carry a tag: all 6 columns, or all 5 (no tag); anything else is refused."""
    columns = (run[RUN_COLUMNS] != "").sum(axis=1).to_numpy()
    short = np.flatnonzero(columns < 5)
    if len(short):
        line = int(run["line"].iloc[short[0]])
        raise DataError(f"expected 6 columns, found {columns[short[0]]} columns", path=path, line=line, fix=RUN_FIX)
    other = np.flatnonzero(columns != columns[0])
    if len(other):
        line, first = int(run["line"].iloc[other[0]]), int(run["line"].iloc[0])
        raise DataError(
            f"{columns[other[0]]} columns here but {columns[0]} on line {first}: some lines lack the tag",
            path=path,
            line=line,
            fix="give every line the run's tag (6 columns), or none (the run is then named after the file)",
        )
    return bool(columns[0] == 6)


def _refuse_repeats(run: pd.DataFrame, path: Path) -> None:
    """A document ranked twice for a query: the tools disagree on which line counts (trec_eval refuses it)."""
    repeated = run.duplicated(["query_id", "doc_id"]).to_numpy()
    if repeated.any():
        again = run.iloc[np.flatnonzero(repeated)[0]]
        first = run[(run["query_id"] == again["query_id"]) & (run["doc_id"] == again["doc_id"])].iloc[0]
        raise DataError(
            f"document {again['doc_id']!r} is ranked twice for query {again['query_id']!r} "
            f"(first on line {first['line']})",
            path=path,
            line=int(again["line"]),
            fix="keep one line per query and document",
        )


def run_tag(experiment: str) -> str:
    """The TREC tag of an experiment's runs (``star/seed-1`` -> ``star_seed-1``): the system, not the stage."""
    return experiment.replace("/", "_")


def pointer_name(artifact: Path) -> str | None:
    """The tag of the experiment whose pointer ``artifact`` is (results/runs/<experiment>/<role>), if it is one.
    Artifacts shared between experiments keep one key; the name comes from the pointer."""
    parts = Path(artifact).parts
    return run_tag("/".join(parts[len(parts) - parts[::-1].index("runs") : -1])) if "runs" in parts[:-2] else None


def per_query(source: Path, judgments: Judgments, measures: list[str]) -> tuple[str, pd.DataFrame, int]:
    """A run's name, its per-query values (query_id, measure, value) and how many judged queries it does not rank."""
    source = Path(source)
    if (source / PER_QUERY).is_file():
        scores = read_scores(source)
        for measure in measures:
            check_measure(measure, {source: scores})
        return pointer_name(source) or source.name, scores, 0
    if (source / RUN_PARQUET).is_file():
        run, name = read_run(source), pointer_name(source) or source.name
    elif source.is_file():
        run, tag = read_trec_run(source)
        name = pointer_name(source.parent) or tag  # a pointer's run.trec: its tag is the stage's
    else:
        fix = "give TREC run files, run artifacts (run.parquet) or score artifacts (per_query.parquet)"
        raise DataError("not a run", path=source, fix=fix)
    missing = unranked(run, judgments, source)
    return name, evaluate(run, judgments.frame(), measures, judgments.relevance_level), missing


def unranked(run: pd.DataFrame, judgments: Judgments, source: Path) -> int:
    """How many judged queries the run ranks nothing for (they count 0); a run with no judged query is refused."""
    judged, ranked = set(judgments.frame()["query_id"]), set(run["query_id"].unique())
    if not judged & ranked:
        examples = [f" (e.g. {min(ids)!r})" if ids else "" for ids in (ranked, judged)]
        raise DataError(
            f"no query in common with the qrels ({judgments.where()}): the run ranks {len(ranked)}{examples[0]}, "
            f"the qrels judge {len(judged)}{examples[1]}",
            path=source,
            fix="score the run on the qrels of its queries (--qrels, and --split for a prepare artifact)",
        )
    return len(judged - ranked)


def checked_options(measures: list[str], samples: int, relevance_level: int) -> list[str]:
    """The measures, each once; a ConfigError for one not averaged over queries, or for an option out of range."""
    low, high = SAMPLES
    if not low <= samples <= high:
        bound = f"at least {low}: with fewer no p-value falls below 0.05" if samples < low else f"at most {high}"
        raise ConfigError(
            f"--samples {samples}: the paired test's sign flips must be {bound}",
            fix=f"give --samples from {low} to {high} (default {PERMUTATIONS})",
        )
    if relevance_level < 1:
        raise ConfigError(
            f"--relevance-level {relevance_level}: judgments count as relevant from this level up; "
            "it must be at least 1",
            fix="give --relevance-level 1 (the default) or higher",
        )
    for measure in measures:
        check(measure)
    return list(dict.fromkeys(measures))


def compare(
    sources: list[Path], judgments: Judgments, measures: list[str], samples: int = PERMUTATIONS, seed: int = 0
) -> dict:
    """Means, and for every two runs and measure the paired test's p-value and its Holm correction over the pairs.
    A mean is over every judged query, as `score` and ``trec_eval -c`` take it: a query a run does not rank counts 0
    (``warnings`` say how many each run misses)."""
    measures = checked_options(measures, samples, judgments.relevance_level)
    found = [(source, *per_query(source, judgments, measures)) for source in sources]
    runs = {name: values for _, name, values, _ in found}
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
    queries = runs[names[0]]["query_id"].nunique()
    result["queries"], result["missing"] = queries, {name: k for _, name, _, k in found if k}
    result["averaged"] = (
        f"means over all {queries} judged queries; a query a run does not rank counts 0 (as score and trec_eval -c)"
    )
    result["warnings"] = [
        f"{source}: the run ranks nothing for {k} of the {queries} judged queries; they count 0 in its means"
        for source, _, _, k in found
        if k
    ]
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
    lines.append(f"superscripts: better than that run, Holm-corrected p < {alpha} ({result['test']})")
    return "\n".join(lines + [result["averaged"]])


def render(result: dict, as_json: bool) -> str:
    return json.dumps(result, indent=2) if as_json else table(result)
