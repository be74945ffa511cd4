"""The report's results table as Markdown, HTML (for `snakemake --report`) and CSV, from `stage.aggregate`'s frame.

A cell: the mean, ``± std`` over seeds only when there are several, the 95% bootstrap interval over queries, and the
Holm-corrected p-value against the reference; a p-value whose test found no sign flip as extreme (the test's floor)
is printed as a bound, ``p < 1e-4``.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

import pandas as pd

from ..ml.stats import PERMUTATIONS, p_floor
from .costs import ACCOUNTING, COST_COLUMNS, TOTAL_GPU

EFFICIENCY_MEASURES = ["nDCG@10", "MRR@10"]


def upper_bound(value: float) -> str:
    """``value`` rounded up to one significant digit, as ``3e-4``."""
    exponent = math.floor(math.log10(value))
    digit = math.ceil(round(value / 10**exponent, 9))
    if digit == 10:
        digit, exponent = 1, exponent + 1
    return f"{digit}e{exponent}"


def p_text(raw: float, adjusted: float, samples: int = PERMUTATIONS) -> str:
    """A Holm-corrected p-value; from a raw p-value at the test's floor only an upper bound is known."""
    if raw <= p_floor(samples) * (1 + 1e-9):
        return f"p < {upper_bound(adjusted)}"
    return f"p = {adjusted:.2g}"


def cell(row: pd.Series, measure: str) -> str:
    low, high = row[f"{measure} ci95"]
    text = f"{row[measure]:.4f}"
    if row["seeds"] > 1:
        text += f" ± {row[f'{measure} std']:.4f}"
    text += f" [{low:.3f}, {high:.3f}]"
    raw = row.get(f"{measure} p", math.nan)
    return text if pd.isna(raw) else f"{text} {p_text(raw, row[f'{measure} p holm'])}"


def variant_name(row: pd.Series) -> str:
    return f"{row['variant']} (reference)" if row["reference"] else row["variant"]


def split_tables(table: pd.DataFrame, measures: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(split, header, rows of cells) for each split, in the table's order."""
    header = ["variant", "index", "seeds", *measures, "train s", "device"]
    tables = []
    for split, group in table.groupby("split", sort=False):
        rows = []
        for _, row in group.iterrows():
            seconds = f"{row['train seconds']:.0f}" if row["train seconds"] else "-"
            measured = [cell(row, measure) for measure in measures]
            described = [variant_name(row), row["index"] or "-", str(row["seeds"])]
            rows.append([*described, *measured, seconds, row["device"] or "-"])
        tables.append((split, header, rows))
    return tables


def notes(table: pd.DataFrame, reference: str) -> str:
    several = (table["seeds"] > 1).any()
    text = "mean over queries" + (" (averaged over seeds) ± std over seeds" if several else "")
    text += " [95% bootstrap interval over queries" + (" of the seed-averaged values]" if several else "]")
    if reference:
        compared = table.loc[~table["reference"], "variant"].nunique()
        floor = upper_bound(p_floor())
        text += (
            f"; p: paired randomization test against {reference} ({PERMUTATIONS} sign flips, so p < {floor} at"
            f" best), Holm-corrected over the {compared} variants compared on each measure and split"
        )
    return text


def markdown(table: pd.DataFrame, measures: list[str], reference: str) -> str:
    lines = []
    for split, header, rows in split_tables(table, measures):
        lines += [f"### {split}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        lines.append("")
    return "\n".join(lines + [notes(table, reference), ""])


def html(table: pd.DataFrame, measures: list[str], reference: str) -> str:
    """The same table as a standalone HTML page (snakemake's report embeds it)."""
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>results</title>', f"<style>{STYLE}</style>"]
    parts.append("</head><body>")
    for split, header, rows in split_tables(table, measures):
        heads = "".join(f"<th>{escape(h)}</th>" for h in header)
        parts += [f"<h3>{escape(split)}</h3>", "<table>", f"<tr>{heads}</tr>"]
        parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>" for cells in rows]
        parts.append("</table>")
    parts += [f"<p>{escape(notes(table, reference))}</p>", "</body></html>", ""]
    return "\n".join(parts)


STYLE = "body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 6px}"


def csv_frame(table: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """The results table as CSV: quality only (the costs are efficiency.csv's)."""
    frame = table.drop(columns=[*COST_COLUMNS, f"{TOTAL_GPU} std", f"{TOTAL_GPU} by seed"], errors="ignore")
    for measure in measures:
        frame[f"{measure} ci95 low"] = frame[f"{measure} ci95"].map(lambda ci: ci[0])
        frame[f"{measure} ci95 high"] = frame[f"{measure} ci95"].map(lambda ci: ci[1])
        frame = frame.drop(columns=[f"{measure} ci95", f"{measure} by seed"])
    return frame


def efficiency_frame(table: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """A row per variant on test (else the last split): its quality (mean, std over seeds) and its costs."""
    split = "test" if "test" in set(table["split"]) else table["split"].iloc[-1]
    chosen = [m for m in EFFICIENCY_MEASURES if m in measures] or measures[:1]
    columns = ["variant", "method", "split", "seeds"]
    columns += [c for m in chosen for c in (m, f"{m} std", f"{m} by seed")]
    columns += [*COST_COLUMNS, f"{TOTAL_GPU} std", f"{TOTAL_GPU} by seed"]
    return table.loc[table["split"] == split, columns].reset_index(drop=True)


def spread(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def efficiency_markdown(frame: pd.DataFrame, measures: list[str]) -> str:
    """The efficiency table: quality and seconds per variant, ordered by total GPU seconds."""
    chosen = [m for m in EFFICIENCY_MEASURES if m in measures] or measures[:1]
    header = ["variant", "seeds", *chosen, TOTAL_GPU, *[c for c in COST_COLUMNS if c != TOTAL_GPU]]
    lines = [f"### efficiency on {frame['split'].iloc[0]}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for _, row in frame.sort_values(TOTAL_GPU, kind="stable").iterrows():
        quality = [spread(row[m], row[f"{m} std"], 4) for m in chosen]
        costs = [f"{row[c]:.1f}" for c in COST_COLUMNS if c != TOTAL_GPU]
        total = spread(row[TOTAL_GPU], row[f"{TOTAL_GPU} std"], 1)
        lines.append("| " + " | ".join([row["variant"], str(row["seeds"]), *quality, total, *costs]) + " |")
    note = "mean over seeds ± std over seeds (measures: mean over queries); " + ACCOUNTING
    return "\n".join(lines + ["", note, ""])


def console_summary(report_dir: Path, measure: str = "nDCG@10") -> str:
    """What a run prints at its end: ``measure`` per variant and split, with its 95% interval, and where the report
    is. Reads the report's results.csv."""
    frame = pd.read_csv(Path(report_dir) / "results.csv")
    splits = list(dict.fromkeys(frame["split"]))
    lines = [f"{measure} (95% bootstrap interval over queries)", ""]
    header = ["variant"] + splits
    rows = []
    for variant, group in frame.groupby("variant", sort=False):
        by_split = group.set_index("split")
        reference = bool(group["reference"].iloc[0])
        cells = [f"{variant} (reference)" if reference else str(variant)]
        for split in splits:
            if split not in by_split.index:
                cells.append("-")
                continue
            row = by_split.loc[split]
            low, high = row[f"{measure} ci95 low"], row[f"{measure} ci95 high"]
            interval = f" [{low:.3f}, {high:.3f}]" if pd.notna(low) else ""
            cells.append(f"{row[measure]:.4f}{interval}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for cells in [header] + rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip())
    lines += ["", f"full table: {Path(report_dir) / 'results.md'}  (plots beside it)"]
    return "\n".join(lines)
