"""The report stage's work: `aggregate` the score and training artifacts into one frame (a row per variant and
split), then write the table (`table`), the plots (`plots`) and report.json from it.

For each variant (experiment) and split: each measure's mean over queries (averaged over seeds, ± the std over seeds
when there are several), its 95% bootstrap interval over queries (`stats.query_interval`: the score artifact's own
for one seed, that of the seed-averaged values for several), and a paired randomization test against the reference
variant, Holm-corrected over the variants compared on that measure and split; the training time (sum of the chain's
training stages) and the device; the costs of `costs` averaged over seeds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..core.cli import run_stage
from ..core.errors import ConfigError, DataError
from ..core.tables import _read
from ..ml.stats import holm, paired_randomization_test, query_interval, seed_averaged
from .costs import COST_COLUMNS, TOTAL_GPU, run_costs
from .plots import plot_efficiency, plot_index_kinds, plot_losses, plot_metrics
from .table import csv_frame, efficiency_frame, efficiency_markdown, html, markdown

log = logging.getLogger("stages.report")



@dataclass
class ReportParams:
    rows: list[dict]
    """One per scored run: {variant, method, seed (or null), split, index (flat/pq/''), score (input name),
    train (input names of its chain's training artifacts, upstream first), costs ({input, stage, shared} of every
    artifact its run was built from: `costs`)}."""
    reference: str
    """Variant the p-values compare against ('' = none)."""
    measures: list[str]
    """Names of the measures registry (`stages.ml.measures`)."""
    bootstrap_samples: int
    """Resamples of the intervals of rows with several seeds (one-seed rows reuse the score artifact's)."""
    seed: int


def training(train_inputs: list[str], inputs: Mapping[str, Path]) -> tuple[float, str]:
    seconds, devices = 0.0, set()
    for name in train_inputs:
        summary = json.loads((Path(inputs[name]) / "summary.json").read_text())
        seconds += float(summary.get("seconds") or 0.0)
        devices.add(str(summary.get("device", "")))
    return seconds, ", ".join(sorted(d for d in devices if d))


def scored_interval(score: Path, measure: str) -> tuple[float, float]:
    """The interval the score artifact wrote (`stats.query_interval` of its values)."""
    metrics = json.loads((Path(score) / "metrics.json").read_text())["metrics"]
    if measure not in metrics:
        fix = f"add {measure} to score.measures, or leave it out of report.measures"
        raise ConfigError(f"measure {measure} is in report.measures but was not scored ({Path(score)})", fix=fix)
    low, high = metrics[measure]["ci95"]
    return float(low), float(high)


def interval(scores: list[Path], frames: list[pd.DataFrame], measure: str, params: ReportParams) -> tuple[float, float]:
    if len(scores) == 1:
        return scored_interval(scores[0], measure)
    return query_interval(frames, measure, params.bootstrap_samples, params.seed)


def paired_p(frames: list[pd.DataFrame], reference: list[pd.DataFrame], measure: str, seed: int) -> float:
    values, other = seed_averaged(frames, measure), seed_averaged(reference, measure)
    if set(values.index) != set(other.index):
        raise DataError(f"a variant and the reference are not scored on the same queries for {measure}")
    return paired_randomization_test(values.to_numpy(), other.reindex(values.index).to_numpy(), seed=seed)


def add_holm(table: pd.DataFrame, measures: list[str]) -> None:
    """``<measure> p holm``: the p-values Holm-corrected over the variants compared on one measure and split."""
    for measure in measures:
        column = f"{measure} p"
        table[f"{column} holm"] = np.nan
        if column not in table:
            continue
        for _, group in table[table[column].notna()].groupby("split"):
            table.loc[group.index, f"{column} holm"] = holm(group[column].tolist())


def aggregate(params: ReportParams, inputs: Mapping[str, Path]) -> pd.DataFrame:
    rows = pd.DataFrame(params.rows)
    per_query = {row["score"]: _read(Path(inputs[row["score"]]) / "per_query.parquet") for row in params.rows}
    table = []
    for (variant, split), group in rows.groupby(["variant", "split"], sort=False):
        frames = [per_query[name] for name in group["score"]]
        entry: dict[str, Any] = {
            "variant": variant,
            "reference": variant == params.reference,
            "method": group["method"].iloc[0],
            "index": group["index"].iloc[0],
            "split": split,
            "seeds": len(group),
        }
        reference = rows[(rows["variant"] == params.reference) & (rows["split"] == split)]
        reference_frames = [per_query[name] for name in reference["score"]]
        for measure in params.measures:
            by_seed = [float(f.loc[f["measure"] == measure, "value"].mean()) for f in frames]
            entry[measure] = float(np.mean(by_seed))
            entry[f"{measure} by seed"] = by_seed
            entry[f"{measure} std"] = float(np.std(by_seed, ddof=1)) if len(by_seed) > 1 else np.nan
            entry[f"{measure} ci95"] = interval([Path(inputs[n]) for n in group["score"]], frames, measure, params)
            if reference_frames and variant != params.reference:
                entry[f"{measure} p"] = paired_p(frames, reference_frames, measure, params.seed)
        seconds = [training(train, inputs) for train in group["train"]]
        entry["train seconds"] = float(np.mean([s for s, _ in seconds])) if seconds else 0.0
        entry["device"] = ", ".join(sorted({d for _, d in seconds if d}))
        entry.update(seed_costs([run_costs(costs, inputs) for costs in group.get("costs", [[]] * len(group))]))
        table.append(entry)
    table = pd.DataFrame(table)
    add_holm(table, params.measures)
    return table


def seed_costs(by_seed: list[dict[str, float]]) -> dict[str, Any]:
    """Each cost column's mean over seeds; the total GPU seconds also by seed and their std."""
    entry: dict[str, Any] = {column: float(np.mean([c[column] for c in by_seed])) for column in COST_COLUMNS}
    totals = [c[TOTAL_GPU] for c in by_seed]
    entry[f"{TOTAL_GPU} by seed"] = totals
    entry[f"{TOTAL_GPU} std"] = float(np.std(totals, ddof=1)) if len(totals) > 1 else np.nan
    return entry


def report(params: ReportParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    if not params.rows:
        raise ConfigError("the report has no scored runs", fix="add experiments to the config")
    unknown = sorted(set(params.measures) - {"nDCG@10", "MRR@10", "R@100", "R@1000", "MAP"})
    if unknown:
        raise ConfigError(f"unknown report measures {unknown}")
    if params.reference and params.reference not in {row["variant"] for row in params.rows}:
        raise ConfigError(f"report reference {params.reference!r} is not an experiment of the config")
    table = aggregate(params, inputs)
    out_dir = Path(out_dir)
    (out_dir / "results.md").write_text(markdown(table, params.measures, params.reference))
    (out_dir / "results.html").write_text(html(table, params.measures, params.reference))
    csv_frame(table, params.measures).to_csv(out_dir / "results.csv", index=False, float_format="%.6g")
    records = json.loads(table.to_json(orient="records"))  # NaN (no std, no p) as null
    (out_dir / "report.json").write_text(json.dumps(records, indent=2) + "\n")
    plot_metrics(table, params.measures, out_dir / "metrics_by_variant.png")
    plots = ["metrics_by_variant.png"]
    if plot_losses(params.rows, inputs, out_dir / "loss_curves.png"):
        plots.append("loss_curves.png")
    if plot_index_kinds(table, params.measures[0], out_dir / "index_kinds.png"):
        plots.append("index_kinds.png")
    efficiency = efficiency_frame(table, params.measures)
    (out_dir / "efficiency.md").write_text(efficiency_markdown(efficiency, params.measures))
    listed = [column for column in efficiency if column.endswith(" by seed")]
    efficiency.drop(columns=listed).to_csv(out_dir / "efficiency.csv", index=False, float_format="%.6g")
    devices = ", ".join(sorted({d for d in table.get("device", pd.Series(dtype=str)).dropna() if d and d != "-"}))
    if plot_efficiency(efficiency, params.measures, out_dir / "efficiency.png", devices):
        plots.append("efficiency.png")
    log.info("report:\n%s", (out_dir / "results.md").read_text())
    return {"variants": int(table["variant"].nunique()), "plots": plots}


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", ReportParams, report, argv)

