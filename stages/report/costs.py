"""What each scored run cost, from the summary.json of the artifacts its plan row lists (`stages.pipeline.costs`).

A stage's seconds are its ``resources.wall_s`` (the whole stage: loading, work, writing), or its ``seconds`` where an
older summary has no resources block. GPU stages (`stages.core.declarations`) split into training and the rest
(corpus encodes and retrievals, BM25 runs included, e.g. the mining runs); every other stage (the BM25 index, index
builds, mining negatives from a run, tokenizing) counts as CPU seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ..core.declarations import STAGES

TRAIN_GPU, OTHER_GPU, SHARED_GPU, TOTAL_GPU, CPU = (
    "GPU s train", "GPU s encode+retrieve", "GPU s shared", "GPU s total", "CPU s",
)  # fmt: skip
COST_COLUMNS = [TRAIN_GPU, OTHER_GPU, TOTAL_GPU, SHARED_GPU, CPU]


def stage_seconds(summary: Mapping) -> float:
    resources = summary.get("resources") or {}
    return float(resources.get("wall_s") or summary.get("seconds") or 0.0)


def run_costs(costs: list[Mapping], inputs: Mapping[str, Path]) -> dict[str, float]:
    """The cost columns of one scored run; ``costs``: its row's {input, stage, shared} entries."""
    totals = dict.fromkeys(COST_COLUMNS, 0.0)
    for entry in costs:
        seconds = stage_seconds(json.loads((Path(inputs[entry["input"]]) / "summary.json").read_text()))
        if not STAGES[entry["stage"]].gpu:
            totals[CPU] += seconds
            continue
        totals[TRAIN_GPU if entry["stage"].startswith("train_") else OTHER_GPU] += seconds
        totals[TOTAL_GPU] += seconds
        if entry["shared"]:
            totals[SHARED_GPU] += seconds
    return totals


ACCOUNTING = (
    "GPU s: seconds of the GPU stages (training, corpus encodes, retrievals); seconds are whole stage runs"
    " (summary.json resources.wall_s) of everything the scored retriever was built from,"
    " its final corpus encode and index included, its test retrieval and scoring left out; ANCE's refreshes count"
    " towards ANCE, STAR's one mining pass towards STAR; the shared warm-up model and BM25 (and the tokenized corpus)"
    " count in full towards every method built on them ('GPU s shared': the warm-up's and the BM25 runs' part of the"
    " total; BM25 runs are a GPU stage, on the CPU where there is no GPU); the BM25 index, index builds and mining"
    " negatives from a run are CPU stages here"
)
