"""MS MARCO-size extrapolation, 100k -> 1M growth and the DAG's timeline from a scale run's JSON
(`docs/results/scale-h200/*.json`: `benchmarks/stage_table.py`'s rows plus the session's facts).

    python benchmarks/extrapolate_scale.py docs/results/scale-h200/1m.json --smaller docs/results/scale-h200/100k.json

Every stage except training is scaled from its measured wall time (process start included), assuming:
- corpus stages (prepare, tokenize, bm25_index, encode, index) grow linearly with the passages, at the same tokens
  a passage;
- bm25, retrieve and mine_negatives grow linearly with query x passage pairs (train stages with the train queries,
  dev stages with the dev queries);
- score grows with its queries, report is fixed;
- the same 16 cores and threads a rule, no credit for jobs that snakemake runs at the same time (the sum of stages).
A second estimate keeps each stage's start (wall time minus its own timer, `work_s`) fixed and scales only the timed
work. Trainers are left out of the total; one epoch at the measured step rates is printed apart.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

MSMARCO = {"passages": 8_841_823, "train": 502_939, "dev": 6_980}
CORPUS = {"prepare", "tokenize", "bm25_index", "encode", "index"}
PAIRS = {"bm25", "retrieve", "mine_negatives"}
TRAINING = {"train_warmup", "train_star", "train_adore"}
PER_TOKEN = {"tokenize", "encode"}  # growth per token where both runs record tokens


def sizes(label: str) -> dict[str, int]:
    """{'passages', 'train', 'dev'} from a label like '1m: 1000000 passages, 100000 train queries, 6980 dev queries'."""
    found = {name: re.search(rf"(\d+) {word}", label) for name, word in
             (("passages", "passages"), ("train", "train queries"), ("dev", "dev queries"))}
    if not all(found.values()):
        raise ValueError(f"label without passages / train / dev counts: {label!r}")
    return {name: int(match.group(1)) for name, match in found.items()}


def split(entry: dict, size: dict[str, int], fallback: str | None = None) -> str | None:
    """'train' or 'dev' for a query stage: by its roles, else by its query count, else ``fallback``."""
    roles = " ".join(entry.get("roles") or [])
    if re.search(r"-train\b|negatives", roles):
        return "train"
    if re.search(r"-dev\b", roles):
        return "dev"
    queries = entry.get("items", {}).get("queries")
    for name in ("train", "dev"):
        if queries is not None and queries == size[name]:
            return name
    return "dev" if entry["stage"] == "score" else fallback


def factor(entry: dict, size: dict[str, int], target: dict[str, int]) -> float:
    """How much more work ``entry`` does at ``target`` than at ``size`` (linear model above)."""
    stage = entry["stage"]
    if stage in CORPUS:
        return target["passages"] / size["passages"]
    if stage in PAIRS:
        name = split(entry, size)
        return target[name] * target["passages"] / (size[name] * size["passages"])
    if stage == "score":
        return target["dev"] / size["dev"]
    return 1.0


def work_seconds(run: dict, entry: dict) -> float | None:
    value = run.get("work_s", {}).get(entry["key"])
    return float(value) if isinstance(value, (int, float)) else None


def extrapolate(run: dict, target: dict[str, int] = MSMARCO) -> tuple[list[dict], dict]:
    """Per non-training stage: measured s, factor, linear s, start+work s; and the totals."""
    size = sizes(run["label"])
    rows = []
    for entry in run["stages"]:
        if entry["stage"] in TRAINING:
            continue
        wall, f = float(entry["wall_s"]), factor(entry, size, target)
        work = work_seconds(run, entry)
        fixed = 0.0 if work is None else max(wall - work, 0.0)
        rows.append({
            "stage": entry["stage"], "key": entry["key"], "role": (entry.get("roles") or [""])[0],
            "wall_s": wall, "factor": f, "linear_s": wall * f, "start_plus_work_s": fixed + (wall - fixed) * f,
        })
    totals = {name: sum(row[name] for row in rows) for name in ("wall_s", "linear_s", "start_plus_work_s")}
    return rows, totals


def epochs(run: dict, target: dict[str, int] = MSMARCO) -> list[dict]:
    """One epoch of each trainer at ``target``'s train queries: at the stage's steps/s (start included, as if the
    start recurred per 300 steps) and as start + steps at the trainer's own step time (``work_s``)."""
    rows = []
    for entry in run["stages"]:
        if entry["stage"] not in TRAINING:
            continue
        steps, queries, wall = entry["items"]["steps"], entry["items"]["queries"], float(entry["wall_s"])
        batch = queries // steps
        epoch_steps = target["train"] // batch
        work = work_seconds(run, entry)
        row = {
            "stage": entry["stage"], "role": (entry.get("roles") or [""])[0], "steps": steps, "wall_s": wall,
            "steps_per_s": steps / wall, "epoch_steps": epoch_steps,
            "epoch_at_stage_rate_s": epoch_steps * wall / steps,
        }
        if work is not None:
            row |= {"work_s": work, "work_steps_per_s": steps / work, "start_s": wall - work,
                    "epoch_start_plus_steps_s": (wall - work) + epoch_steps * work / steps}
        rows.append(row)
    return rows


def bm25_at_benchmark(run: dict, target: dict[str, int] = MSMARCO) -> dict | None:
    """The start + work total with the train BM25 run's search at the rate of the run's own BM25 benchmark
    (``benchmarks.bm25.ours_16_threads``: all 16 threads, alone on the box) instead of the DAG's (the rule's 8
    threads): its start (wall - search) kept, its search seconds per query x passage pair taken from the benchmark."""
    bench = run.get("benchmarks", {}).get("bm25", {}).get("ours_16_threads")
    if not bench:
        return None
    size = sizes(run["label"])
    rows, totals = extrapolate(run, target)
    per_pair = bench["seconds"] / (bench["queries"] * size["passages"])
    for row, entry in zip(rows, (e for e in run["stages"] if e["stage"] not in TRAINING)):
        work = work_seconds(run, entry)
        if entry["stage"] == "bm25" and split(entry, size) == "train" and work is not None:
            new = (row["wall_s"] - work) + per_pair * target["train"] * target["passages"]
            return {"key": row["key"], "was_s": row["start_plus_work_s"], "now_s": new,
                    "total_s": totals["start_plus_work_s"] - row["start_plus_work_s"] + new}
    return None


def units(entry: dict, size: dict[str, int], stage_split: str | None) -> tuple[str, float] | None:
    """(item name, items) for the growth comparison: documents or tokens for corpus stages, query x passage pairs
    for bm25 / retrieve / mining, queries for score."""
    stage, items = entry["stage"], entry.get("items") or {}
    if stage in CORPUS:
        if stage in PER_TOKEN and "tokens" in items:
            return "tokens", items["tokens"]
        return "documents", items.get("documents", size["passages"])
    if stage in PAIRS:
        queries = items.get("queries") or (size[stage_split] if stage_split else None)
        return ("query x passage pairs", queries * size["passages"]) if queries else None
    if stage == "score":
        return "queries", items.get("queries", size["dev"])
    return None


def growth(small: dict, large: dict) -> list[dict]:
    """Time per item at ``large`` over ``small``, pairing the n-th occurrence of each stage (both lists are in the
    order the artifacts were made, which is the DAG's order for these runs). Training and report are left out."""
    size_s, size_l = sizes(small["label"]), sizes(large["label"])
    seen: dict[str, list[dict]] = {}
    for entry in small["stages"]:
        seen.setdefault(entry["stage"], []).append(entry)
    count: dict[str, int] = {}
    rows = []
    for entry in large["stages"]:
        stage = entry["stage"]
        n = count[stage] = count.get(stage, -1) + 1
        if stage in TRAINING or stage == "report" or n >= len(seen.get(stage, [])):
            continue
        other = seen[stage][n]
        which = split(entry, size_l)
        big, little = units(entry, size_l, which), units(other, size_s, split(other, size_s, which))
        if big is None or little is None or big[0] != little[0]:
            continue
        per_small, per_large = other["wall_s"] / little[1], entry["wall_s"] / big[1]
        rows.append({
            "stage": stage, "role": (entry.get("roles") or [""])[0],
            "small_key": other["key"], "large_key": entry["key"], "item": big[0],
            "small_s_per_item": per_small, "large_s_per_item": per_large, "ratio": per_large / per_small,
        })
    return rows


def _seconds(clock: str) -> int:
    moment = datetime.strptime(clock, "%H:%M:%S")
    return moment.hour * 3600 + moment.minute * 60 + moment.second


def _union(spans: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            total, end = total + b - a, b
        elif b > end:
            total, end = total + b - end, b
    return total


def timeline(run: dict) -> dict | None:
    """From ``snakemake_jobs`` (start and end of every job, from snakemake's output): seconds with any job running,
    with a non-training job running, with only training running, and the summed job times."""
    jobs = run.get("snakemake_jobs")
    if not jobs:
        return None
    spans = [(_seconds(j["start"]), _seconds(j["end"]), j["rule"]) for j in jobs]
    training = [(a, b) for a, b, rule in spans if rule.startswith("train_")]
    other = [(a, b) for a, b, rule in spans if not rule.startswith("train_")]
    any_job = _union([(a, b) for a, b, _ in spans])
    return {
        "any_job_running_s": any_job,
        "non_training_job_running_s": _union(other),
        "only_training_running_s": any_job - _union(other),
        "summed_non_training_job_s": sum(b - a for a, b in other),
        "summed_training_job_s": sum(b - a for a, b in training),
        "jobs_stopped_by_timeout": sum(1 for j in jobs if j.get("stopped_by_timeout")),
    }


def _fmt(seconds: float) -> str:
    return f"{seconds:,.0f} s ({seconds / 60:.1f} min)"


def report(run: dict, small: dict | None = None, target: dict[str, int] = MSMARCO) -> str:
    size = sizes(run["label"])
    lines = [f"# {run['label']} -> {target['passages']:,} passages, {target['train']:,} train / "
             f"{target['dev']:,} dev queries", ""]
    non_training = [e for e in run["stages"] if e["stage"] not in TRAINING]
    lines.append(f"non-training stages, summed wall_s: {_fmt(sum(e['wall_s'] for e in non_training))}; "
                 f"max peak RSS: {max(e['peak_rss_gib'] for e in run['stages']):.2f} GiB")
    span = timeline(run)
    if span:
        lines.append("snakemake timeline: " + ", ".join(f"{k} {v}" for k, v in span.items()))
    lines += ["", "| stage | role | measured s | factor | linear s | start + work s |", "|---|---|---|---|---|---|"]
    rows, totals = extrapolate(run, target)
    for row in rows:
        lines.append(f"| {row['stage']} | {row['role']} | {row['wall_s']:.1f} | {row['factor']:.2f} | "
                     f"{row['linear_s']:,.0f} | {row['start_plus_work_s']:,.0f} |")
    lines.append(f"| **total, training excluded** | | {totals['wall_s']:.1f} | | {totals['linear_s']:,.0f} | "
                 f"{totals['start_plus_work_s']:,.0f} |")
    lines += ["", f"total, linear: {_fmt(totals['linear_s'])}; start + work: {_fmt(totals['start_plus_work_s'])}"]
    variant = bm25_at_benchmark(run, target)
    if variant:
        lines.append(f"start + work with the train BM25 at the 16-thread benchmark's rate: {_fmt(variant['total_s'])} "
                     f"(train BM25 {_fmt(variant['was_s'])} -> {_fmt(variant['now_s'])})")
    lines.append("")
    lines += ["| trainer | role | steps/s (stage) | epoch steps | epoch at stage rate | steps/s (own timer) | "
              "start + epoch at own rate |", "|---|---|---|---|---|---|---|"]
    for row in epochs(run, target):
        lines.append(f"| {row['stage']} | {row['role']} | {row['steps_per_s']:.2f} | {row['epoch_steps']:,} | "
                     f"{_fmt(row['epoch_at_stage_rate_s'])} | {row.get('work_steps_per_s', float('nan')):.2f} | "
                     f"{_fmt(row['epoch_start_plus_steps_s']) if 'epoch_start_plus_steps_s' in row else '-'} |")
    trainers = epochs(run, target)
    if trainers and all("epoch_start_plus_steps_s" in row for row in trainers):
        at_rate = sum(r["epoch_at_stage_rate_s"] for r in trainers)
        as_steps = sum(r["epoch_start_plus_steps_s"] for r in trainers)
        lines.append(f"\nall trainers, one epoch each: {_fmt(at_rate)} at the stages' steps/s, {_fmt(as_steps)} "
                     "as start + steps")
    if small is not None:
        lines += ["", f"growth {small['label'].split(':')[0]} -> {run['label'].split(':')[0]} (time per item):", "",
                  "| stage | role | item | small s/item | large s/item | ratio |", "|---|---|---|---|---|---|"]
        for row in growth(small, run):
            flag = " **> 1.3**" if row["ratio"] > 1.3 else ""
            lines.append(f"| {row['stage']} | {row['role']} | {row['item']} | {row['small_s_per_item']:.3g} | "
                         f"{row['large_s_per_item']:.3g} | {row['ratio']:.2f}{flag} |")
    lines.append(f"\n(measured at {size['passages']:,} passages, {size['train']:,} train / "
                 f"{size['dev']:,} dev queries)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a scale JSON (the larger run)")
    parser.add_argument("--smaller", type=Path, help="a smaller run's JSON, for the growth table")
    parser.add_argument("--passages", type=int, default=MSMARCO["passages"])
    parser.add_argument("--train", type=int, default=MSMARCO["train"])
    parser.add_argument("--dev", type=int, default=MSMARCO["dev"])
    args = parser.parse_args(argv)
    run = json.loads(args.run.read_text())
    small = json.loads(args.smaller.read_text()) if args.smaller else None
    print(report(run, small, {"passages": args.passages, "train": args.train, "dev": args.dev}))


if __name__ == "__main__":
    main()
