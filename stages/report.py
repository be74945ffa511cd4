"""Stage `report`: the results table and plots of every experiment in the config.

For each variant (experiment) and split: each measure as mean ± std over seeds, a 95% bootstrap interval over queries
(of the per-query values averaged over seeds), and a paired randomization test against the reference variant (same
averaging); the training time (sum of the chain's training stages) and the device. Outputs:

- results.csv, results.md: the table;
- metrics_by_variant.png: each measure by variant, with the std over seeds as error bars;
- loss_curves.png: the training loss of each trained variant's last training stage (first seed);
- index_kinds.png: nDCG@10 by variant, flat and PQ indexes side by side (when the config has PQ variants);
- report.json: everything in the table, unrounded.

Inputs: ``score_<n>`` (score artifacts) and ``train_<n>`` (training artifacts), described by the ``rows`` param.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from stages.cli import run_stage
from stages.errors import ConfigError
from stages.stats import bootstrap_ci, paired_randomization_test
from stages.tables import _read

VERSION = 1
log = logging.getLogger("stages.report")

TABLE_MEASURES = ["nDCG@10", "MRR@10", "R@100", "R@1000"]


@dataclass
class ReportParams:
    rows: list[dict] = field(default_factory=list)
    """One per scored run: {variant, method, seed (or null), split, index (flat/pq/''), score (input name),
    train (input names of its chain's training artifacts, upstream first)}."""
    reference: str = ""
    """Variant the p-values compare against ('' = none)."""
    measures: list[str] = field(default_factory=lambda: list(TABLE_MEASURES))
    bootstrap_samples: int = 1000
    seed: int = 0


def seed_averaged(frames: list[pd.DataFrame], measure: str) -> pd.Series:
    """Per-query values of ``measure`` averaged over the seeds' score artifacts."""
    series = [f[f["measure"] == measure].set_index("query_id")["value"] for f in frames]
    return pd.concat(series, axis=1).mean(axis=1).sort_index()


def training(train_inputs: list[str], inputs: Mapping[str, Path]) -> tuple[float, str]:
    seconds, devices = 0.0, set()
    for name in train_inputs:
        summary = json.loads((Path(inputs[name]) / "summary.json").read_text())
        seconds += float(summary.get("seconds") or 0.0)
        devices.add(str(summary.get("device", "")))
    return seconds, ", ".join(sorted(d for d in devices if d))


def aggregate(params: ReportParams, inputs: Mapping[str, Path]) -> pd.DataFrame:
    rows = pd.DataFrame(params.rows)
    per_query = {row["score"]: _read(Path(inputs[row["score"]]) / "per_query.parquet") for row in params.rows}
    table = []
    for (variant, split), group in rows.groupby(["variant", "split"], sort=False):
        frames = [per_query[name] for name in group["score"]]
        entry: dict[str, Any] = {
            "variant": variant,
            "method": group["method"].iloc[0],
            "index": group["index"].iloc[0],
            "split": split,
            "seeds": len(group),
        }
        reference = rows[(rows["variant"] == params.reference) & (rows["split"] == split)]
        reference_frames = [per_query[name] for name in reference["score"]]
        for measure in params.measures:
            by_seed = [f.loc[f["measure"] == measure, "value"].mean() for f in frames]
            averaged = seed_averaged(frames, measure)
            entry[measure] = float(np.mean(by_seed))
            entry[f"{measure} std"] = float(np.std(by_seed, ddof=1)) if len(by_seed) > 1 else 0.0
            entry[f"{measure} ci95"] = bootstrap_ci(averaged.to_numpy(), params.bootstrap_samples, params.seed)
            if reference_frames and variant != params.reference:
                other = seed_averaged(reference_frames, measure).reindex(averaged.index)
                entry[f"{measure} p"] = paired_randomization_test(averaged.to_numpy(), other.to_numpy(), seed=params.seed)
        seconds = [training(train, inputs) for train in group["train"]]
        entry["train seconds"] = float(np.mean([s for s, _ in seconds])) if seconds else 0.0
        entry["device"] = ", ".join(sorted({d for _, d in seconds if d}))
        table.append(entry)
    return pd.DataFrame(table)


def markdown(table: pd.DataFrame, params: ReportParams) -> str:
    reference = f"p: paired randomization test against {params.reference}" if params.reference else ""
    lines = []
    for split, group in table.groupby("split", sort=False):
        header = ["variant", "index", "seeds", *params.measures, "train s", "device"]
        lines += [f"### {split}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in group.iterrows():
            cells = [row["variant"], row["index"] or "-", str(row["seeds"])]
            for measure in params.measures:
                low, high = row[f"{measure} ci95"]
                cell = f"{row[measure]:.4f} ± {row[f'{measure} std']:.4f} [{low:.3f}, {high:.3f}]"
                p = row.get(f"{measure} p")
                cells.append(cell + (f" p={p:.3g}" if isinstance(p, float) and not np.isnan(p) else ""))
            cells += [f"{row['train seconds']:.0f}" if row["train seconds"] else "-", row["device"] or "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    notes = "mean ± std over seeds [95% bootstrap interval over queries of the seed-averaged values]"
    return "\n".join(lines + [f"{notes}; {reference}".rstrip("; "), ""])


def csv_frame(table: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    frame = table.copy()
    for measure in measures:
        frame[f"{measure} ci95 low"] = frame[f"{measure} ci95"].map(lambda ci: ci[0])
        frame[f"{measure} ci95 high"] = frame[f"{measure} ci95"].map(lambda ci: ci[1])
        frame = frame.drop(columns=f"{measure} ci95")
    return frame


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_metrics(table: pd.DataFrame, measures: list[str], split: str, path: Path) -> None:
    rows = table[table["split"] == split]
    fig = figure(2.2 + 0.9 * len(rows) * len(measures) / 2, 4.5)
    axes = fig.add_subplot()
    width = 0.8 / len(measures)
    positions = np.arange(len(rows))
    for i, measure in enumerate(measures):
        bars = axes.bar(positions + i * width, rows[measure], width, yerr=rows[f"{measure} std"], capsize=3, label=measure)
        axes.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=6)
    axes.set_xticks(positions + width * (len(measures) - 1) / 2, rows["variant"], rotation=30, ha="right")
    axes.set_ylim(0, 1.3)  # room above the bars' labels for the legend
    axes.set_yticks(np.arange(0, 1.01, 0.2))
    axes.set_ylabel(f"{split} (mean over seeds; bars: std)")
    axes.legend(ncols=len(measures), fontsize=8, loc="upper left")
    axes.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_losses(params: ReportParams, inputs: Mapping[str, Path], path: Path) -> bool:
    """One curve per training artifact (first seed of each variant); variants sharing it share the curve."""
    variants: dict[str, list[str]] = {}
    first_seed: dict[str, object] = {}
    for row in params.rows:
        if row["train"] and first_seed.setdefault(row["variant"], row["seed"]) == row["seed"]:
            names = variants.setdefault(row["train"][-1], [])
            if row["variant"] not in names:
                names.append(row["variant"])
    curves = []
    for artifact, names in variants.items():
        frame = _read(Path(inputs[artifact]) / "train_log.parquet", ["step", "loss"])
        stage = json.loads((Path(inputs[artifact]) / "manifest.json").read_text())["stage"]
        curves.append((f"{', '.join(names)} ({stage}, seed {first_seed[names[0]]})", frame))
    if not curves:
        return False
    fig = figure(7.5, 4.5)
    axes = fig.add_subplot()
    for label, frame in curves:
        window = max(1, len(frame) // 25)
        axes.plot(frame["step"], frame["loss"].rolling(window, min_periods=1).mean(), label=label)
    axes.set_xlabel("step")
    axes.set_yscale("log")  # pairwise, listwise and ADORE losses differ by orders of magnitude
    axes.set_ylabel("training loss (running mean, log scale)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_index_kinds(table: pd.DataFrame, split: str, path: Path) -> bool:
    rows = table[(table["split"] == split) & (table["index"] != "")]
    if "pq" not in set(rows["index"]):
        return False
    fig = figure(1.5 + 0.7 * len(rows), 4)
    axes = fig.add_subplot()
    colors = rows["index"].map({"flat": "tab:blue", "pq": "tab:orange"})
    bars = axes.bar(rows["variant"], rows["nDCG@10"], yerr=rows["nDCG@10 std"], color=colors, capsize=3)
    axes.bar_label(bars, fmt="%.3f", fontsize=8)
    axes.set_ylabel(f"nDCG@10 on {split}")
    axes.set_title("flat (blue) vs PQ (orange) indexes")
    axes.tick_params(axis="x", rotation=30)
    axes.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def report(params: ReportParams, inputs: Mapping[str, Path], out_dir: Path) -> dict:
    if not params.rows:
        raise ConfigError("the report has no scored runs", fix="add experiments to the config")
    unknown = sorted({m for m in params.measures} - {"nDCG@10", "MRR@10", "R@100", "R@1000", "MAP"})
    if unknown:
        raise ConfigError(f"unknown report measures {unknown}")
    if params.reference and params.reference not in {row["variant"] for row in params.rows}:
        raise ConfigError(f"report reference {params.reference!r} is not an experiment of the config")
    table = aggregate(params, inputs)
    out_dir = Path(out_dir)
    (out_dir / "results.md").write_text(markdown(table, params))
    csv_frame(table, params.measures).to_csv(out_dir / "results.csv", index=False, float_format="%.6g")
    (out_dir / "report.json").write_text(json.dumps(table.to_dict(orient="records"), indent=2, default=float) + "\n")
    final_split = "test" if "test" in set(table["split"]) else table["split"].iloc[-1]
    plot_metrics(table, params.measures, final_split, out_dir / "metrics_by_variant.png")
    plots = ["metrics_by_variant.png"]
    if plot_losses(params, inputs, out_dir / "loss_curves.png"):
        plots.append("loss_curves.png")
    if plot_index_kinds(table, final_split, out_dir / "index_kinds.png"):
        plots.append("index_kinds.png")
    log.info("report:\n%s", (out_dir / "results.md").read_text())
    return {"variants": int(table["variant"].nunique()), "plots": plots}


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", ReportParams, report, argv)


if __name__ == "__main__":
    sys.exit(main())
