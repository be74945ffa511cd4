"""A per-stage throughput table from any results folder: every artifact's summary.json ``resources`` block (wall
time, items, items/s, peak host RSS, peak GPU memory), named by the roles the experiments give it.

    python benchmarks/stage_table.py [results] [--json OUT.json] [--label NAME]

Prints a Markdown table (stage, role, items, seconds, items/s, peak RSS, peak GPU memory) and writes the rows as
JSON with ``--json``. Snakemake's own benchmark files (results/benchmarks/<stage>/<key>.tsv: the job's wall time,
process start included) are added as ``job_s`` where they exist.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def roles(results: Path) -> dict[str, list[str]]:
    """artifact key -> the roles ('star/seed-1:negatives-warmup', ...) that reach it."""
    found: dict[str, list[str]] = {}
    for index in sorted((results / "runs").glob("**/index.json")):
        experiment = str(index.parent.relative_to(results / "runs"))
        for role, path in json.loads(index.read_text()).items():
            found.setdefault(Path(path).name, []).append(f"{experiment}:{role}" if experiment != "." else role)
    return found


def job_seconds(results: Path, stage: str, key: str) -> float | None:
    path = results / "benchmarks" / stage / f"{key}.tsv"
    if not path.is_file():
        return None
    with open(path) as handle:
        row = next(csv.DictReader(handle, delimiter="\t"), None)
    return float(row["s"]) if row and row.get("s") else None


def rows(results: Path) -> list[dict]:
    named = roles(results)
    table = []
    for summary_path in sorted(results.glob("*/*/summary.json")):
        if summary_path.parent.parent.name == "runs":  # pointers to artifacts listed anyway
            continue
        artifact = summary_path.parent
        summary = json.loads(summary_path.read_text())
        block = summary.get("resources")
        if block is None:
            continue
        stage, key = artifact.parent.name, artifact.name
        table.append(
            {
                "stage": stage,
                "key": key,
                "roles": named.get(key, []),
                "wall_s": block["wall_s"],
                "fixed_s": block.get("fixed_s"),
                "job_s": job_seconds(results, stage, key),
                "items": block["items"],
                "items_per_s": block["items_per_s"],
                "threads": block.get("threads"),
                "peak_rss_gib": round(max(block["peak_rss_mib"], block.get("peak_rss_children_mib") or 0) / 1024, 2),
                "peak_gpu_gib": None if block["peak_gpu_mib"] is None else round(block["peak_gpu_mib"] / 1024, 2),
                "created": json.loads((artifact / "manifest.json").read_text()).get("created", ""),
            }
        )
    return sorted(table, key=lambda row: row["created"])


def markdown(table: list[dict]) -> str:
    lines = ["| stage | role | items | work s | before work s | items/s | peak RSS GiB | peak GPU GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table:
        items = ", ".join(f"{count:,} {name}" for name, count in row["items"].items())
        rates = ", ".join(f"{rate:,.0f} {name}/s" for name, rate in row["items_per_s"].items() if rate is not None)
        role = row["roles"][0] if row["roles"] else ""
        gpu = "-" if row["peak_gpu_gib"] is None else f"{row['peak_gpu_gib']:.2f}"
        fixed = "-" if row["fixed_s"] is None else f"{row['fixed_s']:.1f}"
        lines.append(
            f"| {row['stage']} | {role} | {items} | {row['wall_s']:.1f} | {fixed} | {rates} | {row['peak_rss_gib']:.2f} "
            f"| {gpu} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="?", default=Path("results"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--label", default="", help="a name for the run, stored with the rows")
    args = parser.parse_args()
    table = rows(args.results)
    print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps({"label": args.label, "stages": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
