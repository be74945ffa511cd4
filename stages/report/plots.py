"""The report's plots, from `stage.aggregate`'s frame and the training logs.

- metrics_by_variant.png: a panel per measure, each with its own axis; each split's mean with its 95% bootstrap
  interval, the seeds' means when there are several, and ``*`` where the Holm-corrected p against the reference < 0.05;
- loss_curves.png: a panel per loss kind (STAR pairwise, STAR listwise, ADORE's LambdaLoss), ADORE's train MRR and any
  dev metric the training logs hold (``dev_*`` columns), against the step;
- index_kinds.png: the first measure of the dense variants by index kind (flat, PQ, ...), when a variant's kind is
  lossy (`index_kinds.KINDS`: it stores approximations of the embeddings);
- efficiency.png: a panel per measure of `table.efficiency_frame`, the measure against total GPU seconds, a
  point per variant with bars from its lowest to its highest seed on both axes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..core.tables import _read
from ..ml.index_kinds import KINDS
from .costs import TOTAL_GPU

SIGNIFICANCE = 0.05
SPLIT_COLORS = {"train": "tab:green", "dev": "tab:blue", "test": "tab:orange"}
INDEX_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive")
"""Index kinds' colours, in the order of `index_kinds.KINDS` (flat blue, pq red)."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
UNSMOOTHED_BELOW = 30
"""Logs with fewer steps are drawn as they are: a running mean over a handful of points hides more than it shows."""


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


WIDE = 8
"""Variants above which a panel takes a whole row (side by side, 19 variants made a 45-inch-wide figure)."""


def grid(count: int, wide: bool = False) -> tuple[int, int]:
    """Rows and columns of ``count`` panels: at most 3 a row, 2 x 2 for 4; one a row when ``wide``."""
    columns = 1 if wide else 2 if count == 4 else min(3, count)
    return math.ceil(count / columns), columns


def panels(fig, count: int, wide: bool = False) -> list:
    rows, columns = grid(count, wide)
    return [fig.add_subplot(rows, columns, i + 1) for i in range(count)]


def draw_group(axes, x: np.ndarray, frame: pd.DataFrame, measure: str, color: str, label: str) -> tuple[float, float]:
    """One group's means, intervals, values, seed means and significance marks; returns the intervals' extent."""
    means = frame[measure].to_numpy()
    low, high = (np.array([ci[i] for ci in frame[f"{measure} ci95"]]) for i in (0, 1))
    axes.errorbar(x, means, yerr=[means - low, high - means], fmt="o", color=color, capsize=3, label=label)
    holm = frame[f"{measure} p holm"] if f"{measure} p holm" in frame else [np.nan] * len(frame)
    for xi, mean, ci_low, ci_high, seeds, p in zip(x, means, low, high, frame[f"{measure} by seed"], holm):
        axes.annotate(f"{mean:.3f}", (xi, ci_low), xytext=(0, -6), textcoords="offset points", fontsize=6,
                      rotation=90, ha="center", va="top")  # fmt: skip
        if len(seeds) > 1:  # beside the interval, not on it: the seeds' spread is another quantity
            axes.scatter([xi + 0.08] * len(seeds), seeds, marker="D", s=9, facecolor="none", edgecolor="black")
        if p < SIGNIFICANCE:
            axes.annotate("*", (xi, ci_high), ha="center", va="bottom", fontsize=12, color=color)
    return float(low.min()), float(high.max())


def draw_intervals(axes, groups: list[tuple[str, str, pd.DataFrame]], measure: str, variants: list[str]) -> None:
    """Means with their bootstrap intervals, a group (split or index kind) a colour, variants along x."""
    position = {variant: i for i, variant in enumerate(variants)}
    shared = sum(len(frame) for _, _, frame in groups) > len(variants)  # groups side by side only if they overlap
    width = 0.6 / len(groups) if shared else 0.0
    extents = []
    for number, (label, color, frame) in enumerate(groups):
        x = np.array([position[v] for v in frame["variant"]]) + (number - (len(groups) - 1) / 2) * width
        extents.append(draw_group(axes, x, frame, measure, color, label))
    bottom, top = min(low for low, _ in extents), max(high for _, high in extents)
    span = max(top - bottom, 0.01)
    axes.set_ylim(bottom - 0.25 * span, top + 0.12 * span)  # room below for the values, above for the marks
    axes.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
    axes.set_xlim(-0.6, len(variants) - 0.4)
    axes.set_title(measure)
    axes.grid(axis="y", alpha=0.3)


def lossy(kind: str) -> bool:
    """Whether index kind ``kind`` stores approximations of the embeddings (`index_kinds.KINDS`); '' (no index: BM25)
    is not."""
    return kind in KINDS and KINDS[kind].lossy


def registry_order(kinds: pd.Series) -> list[str]:
    """The index kinds of ``kinds`` once each, in the order of `index_kinds.KINDS` (a kind it does not know last)."""
    names = list(KINDS)
    return sorted(set(kinds), key=lambda kind: (names.index(kind) if kind in names else len(names), kind))


def index_color(kind: str) -> str:
    names = list(KINDS)
    return INDEX_COLORS[names.index(kind) % len(INDEX_COLORS)] if kind in names else "gray"


def variant_labels(table: pd.DataFrame) -> dict[str, str]:
    """Tick labels: the reference marked, the index kind of variants on a lossy kind named (``[PQ]``)."""
    labels = {}
    for row in table.drop_duplicates("variant").to_dict("records"):
        mark = (" (ref)" if row["reference"] else "") + (f" [{row['index'].upper()}]" if lossy(row["index"]) else "")
        labels[row["variant"]] = row["variant"] + mark
    return labels


def note(table: pd.DataFrame) -> str:
    """What the marks of `draw_intervals` mean, for the figure's title."""
    text = "mean over queries, 95% bootstrap interval"
    text += "; hollow diamonds: each seed's mean" if (table["seeds"] > 1).any() else ""
    compared = table.filter(like=" p holm").notna().to_numpy().any()
    return text + ("; *: Holm-corrected p < 0.05 vs the reference" if compared else "")


def plot_metrics(table: pd.DataFrame, measures: list[str], path: Path) -> None:
    labels = variant_labels(table)
    table = table.assign(variant=table["variant"].map(labels))
    splits = list(dict.fromkeys(table["split"]))
    colors = [SPLIT_COLORS.get(split, f"C{i}") for i, split in enumerate(splits)]
    groups = [(split, color, table[table["split"] == split]) for split, color in zip(splits, colors)]
    wide = len(labels) > WIDE
    rows, columns = grid(len(measures), wide)
    fig = figure(columns * (1.6 + 0.5 * len(labels) * len(splits) ** 0.5), 3.3 * rows + 0.7)
    for axes, measure in zip(panels(fig, len(measures), wide), measures):
        draw_intervals(axes, groups, measure, list(labels.values()))
    handles, names = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper right", ncols=len(splits), fontsize=8)
    fig.suptitle(note(table), fontsize=9, x=0.01, ha="left")
    fig.savefig(path, dpi=110)


def plot_index_kinds(table: pd.DataFrame, measure: str, path: Path) -> bool:
    """The dense variants by index kind; False (nothing drawn) when none is on a lossy kind."""
    rows = table[table["index"] != ""]
    if not any(lossy(kind) for kind in rows["index"]):
        return False
    labels = variant_labels(rows)
    rows = rows.assign(variant=rows["variant"].map(labels))
    splits = list(dict.fromkeys(rows["split"]))
    fig = figure((1.2 + 0.6 * len(labels)) * len(splits), 3.6)
    for axes, split in zip([fig.add_subplot(1, len(splits), i + 1) for i in range(len(splits))], splits):
        chosen = rows[rows["split"] == split]
        kinds = registry_order(chosen["index"])
        groups = [(kind, index_color(kind), chosen[chosen["index"] == kind]) for kind in kinds]
        draw_intervals(axes, groups, measure, list(labels.values()))
        axes.set_title(f"{measure} on {split}")
    axes.legend(fontsize=8)
    fig.suptitle(f"{' vs '.join(registry_order(rows['index']))} indexes: {note(rows)}", fontsize=9, x=0.01, ha="left")
    fig.savefig(path, dpi=110)
    return True


def loss_kind(manifest: dict) -> str:
    params = manifest.get("params", {})
    if manifest["stage"] == "train_adore":
        return f"ADORE LambdaLoss (Δ{params.get('metric', 'mrr').upper()})"
    return f"STAR {params.get('loss', 'pairwise')} loss"


def training_logs(rows: list[dict], inputs: Mapping[str, Path]) -> list[tuple[str, str, pd.DataFrame]]:
    """(label, loss kind, log) of each variant's last training stage, first seed; variants sharing one share it."""
    variants: dict[str, list[str]] = {}
    first_seed: dict[str, object] = {}
    for row in rows:
        if row["train"] and first_seed.setdefault(row["variant"], row["seed"]) == row["seed"]:
            names = variants.setdefault(row["train"][-1], [])
            if row["variant"] not in names:
                names.append(row["variant"])
    logs = []
    for artifact, names in variants.items():
        manifest = json.loads((Path(inputs[artifact]) / "manifest.json").read_text())
        frame = _read(Path(inputs[artifact]) / "train_log.parquet")
        logs.append((f"{', '.join(names)} (seed {first_seed[names[0]]})", loss_kind(manifest), frame))
    return logs


def smoothing_window(steps: int) -> int:
    return 1 if steps < UNSMOOTHED_BELOW else max(3, steps // 20)


def draw_curve(axes, steps: pd.Series, values: pd.Series, label: str, color: str, evaluations: bool) -> None:
    """The values as logged, and a centred running mean over the window named in the label (not of evaluations)."""
    if evaluations:
        axes.plot(steps, values, marker="o", markersize=4, color=color, label=f"{label}, each evaluation")
        return
    window = smoothing_window(len(values))
    if window == 1:
        axes.plot(steps, values, marker=".", markersize=3, color=color, label=f"{label}, per step")
        return
    axes.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
    smooth = values.rolling(window, center=True, min_periods=1).mean()
    axes.plot(steps, smooth, color=color, label=f"{label}, mean of {window} steps")


def plot_losses(rows: list[dict], inputs: Mapping[str, Path], path: Path) -> list[str]:
    """The panels' titles (none, and no file, without training logs)."""
    logs = training_logs(rows, inputs)
    if not logs:
        return []
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(logs) <= 10 else "tab20"].colors  # one colour per run, never repeated
    color = {label: palette[i % len(palette)] for i, (label, _, _) in enumerate(logs)}
    series = [(kind, "loss", "training loss") for kind in dict.fromkeys(kind for _, kind, _ in logs)]
    if any("train_mrr" in frame for *_, frame in logs):
        series.append((None, "train_mrr", "ADORE train MRR (batch queries)"))
    dev = sorted({c for *_, f in logs for c in f.columns if c.startswith("dev_")})
    series += [(None, column, column.removeprefix("dev_") + " on dev") for column in dev]
    rows, columns = grid(len(series))
    fig = figure(4.6 * columns, 3.4 * rows + 0.4)
    for axes, (kind, column, name) in zip(panels(fig, len(series)), series):
        for label, log_kind, frame in logs:
            if column in frame and (kind is None or kind == log_kind):
                chosen = frame[frame[column].notna()]
                draw_curve(axes, chosen["step"], chosen[column], label, color[label], column.startswith("dev_"))
        axes.set_title(kind or name, fontsize=10)
        axes.set_xlabel("step")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return [axes.get_title() for axes in fig.axes]


def seed_range(means: pd.Series, by_seed: pd.Series) -> np.ndarray:
    """Error bar lengths (below, above) from each mean to its lowest and highest seed."""
    low = np.array([min(values) for values in by_seed]) if len(by_seed) else np.array([])
    high = np.array([max(values) for values in by_seed]) if len(by_seed) else np.array([])
    return np.vstack([means.to_numpy() - low, high - means.to_numpy()])


def plot_efficiency(frame: pd.DataFrame, measures: list[str], path: Path, devices: str = "") -> bool:
    """Quality against total GPU seconds; False (nothing drawn) when no variant used a GPU. ``devices``: what the
    trainers ran on ('cpu': the GPU stages' seconds were spent on the CPU, and the axis says so)."""
    if not (frame[TOTAL_GPU] > 0).any():
        return False
    chosen = [column for column in frame if f"{column} by seed" in frame and column != TOTAL_GPU]
    fig = figure(5.0 * len(chosen), 4.2)
    seconds = frame[TOTAL_GPU]
    from matplotlib import colormaps

    colours = colormaps["tab10" if len(frame) <= 10 else "tab20"].colors
    for axes, measure in zip(panels(fig, len(chosen)), chosen):
        for number, row in enumerate(frame.to_dict("records")):
            one = frame.iloc[[number]]
            axes.errorbar(  # colour and marker together keep up to 140 variants apart
                seconds.iloc[[number]], one[measure], fmt=MARKERS[number % len(MARKERS)], capsize=3,
                color=colours[number % len(colours)], label=row["variant"],
                xerr=seed_range(seconds.iloc[[number]], one[f"{TOTAL_GPU} by seed"]),
                yerr=seed_range(one[measure], one[f"{measure} by seed"]),
            )  # fmt: skip
        axes.set_xlim(left=-0.02 * float(seconds.max()))  # CPU-only variants (0 s) stay whole on the edge
        where = " (on the CPU here)" if devices == "cpu" else ""
        axes.set_xlabel(f"seconds of the GPU stages{where}; shared warm-up and BM25 in full", fontsize=8)
        axes.set_title(f"{measure} on {frame['split'].iloc[0]}")
        axes.grid(alpha=0.3)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    fig.suptitle("mean over seeds; bars: lowest to highest seed", fontsize=9, x=0.01, ha="left")
    fig.savefig(path, dpi=110)
    return True
