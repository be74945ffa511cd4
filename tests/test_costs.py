"""Cost accounting: the plan lists every artifact a scored run was built from, once; the report sums their
summaries' seconds into training GPU, other GPU (encodes, retrievals, BM25 runs), shared GPU (warm-up, BM25 runs)
and CPU seconds."""

from __future__ import annotations

import json

import pytest
import yaml

from stages.pipeline.costs import upstream
from stages.pipeline.dag import Plan
from stages.pipeline.config import load_config
from stages.report.costs import CPU, OTHER_GPU, SHARED_GPU, TOTAL_GPU, TRAIN_GPU, run_costs, stage_seconds

SECONDS = {"train_warmup": 100.0, "train_star": 10.0, "encode": 1.0, "retrieve": 0.5, "bm25": 0.25}
CPU_SECONDS = 2.0
EXPERIMENTS = [
    {"name": "bm25", "method": "bm25"},
    {"name": "zeroshot", "method": "zeroshot"},
    {"name": "star", "method": "star"},
    {"name": "ance", "method": "ance"},
]


@pytest.fixture
def plan(tmp_path, scifact_slice) -> Plan:
    config = {"dataset": {"path": str(scifact_slice)}, "seeds": [1], "ance": {"rounds": 1}, "experiments": EXPERIMENTS}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    plan = Plan(load_config(tmp_path / "config.yaml"), tmp_path / "results")
    for node in plan.nodes():  # fake summaries: seconds by stage
        node.path(plan.results).mkdir(parents=True)
        summary = {"resources": {"wall_s": SECONDS.get(node.stage, CPU_SECONDS)}}
        (node.path(plan.results) / "summary.json").write_text(json.dumps(summary))
    return plan


def costs_of(plan: Plan) -> dict[str, dict[str, float]]:
    inputs = plan.report.input_paths(plan.results)
    return {row["variant"]: run_costs(row["costs"], inputs) for row in plan.report.params["rows"]}


def test_each_methods_costs_are_the_artifacts_its_run_was_built_from(plan):
    costs = costs_of(plan)
    # bm25: its index and the prepared dataset, on CPU
    assert costs["bm25"] == {TRAIN_GPU: 0, OTHER_GPU: 0, TOTAL_GPU: 0, SHARED_GPU: 0, CPU: 2 * CPU_SECONDS}
    # zeroshot: the corpus encoded (2 shards); prepare, tokenize, index on CPU
    assert costs["zeroshot"] == {TRAIN_GPU: 0, OTHER_GPU: 2.0, TOTAL_GPU: 2.0, SHARED_GPU: 0, CPU: 3 * CPU_SECONDS}
    # star: warm-up (shared) + star; the BM25 train run (shared, mined for the warm-up); its mining pass (2 encodes,
    # a train retrieval) + its final encode (2 shards)
    star = costs["star"]
    assert (star[TRAIN_GPU], star[OTHER_GPU], star[SHARED_GPU]) == (110.0, 4.75, 100.25)
    # CPU: prepare, tokenize, bm25 index, both minings, the mining index, the final index
    assert star[CPU] == 7 * CPU_SECONDS
    # ance with one refresh: one more training, one more corpus encode + train retrieval, index and mining
    ance = costs["ance"]
    assert (ance[TRAIN_GPU], ance[OTHER_GPU], ance[SHARED_GPU], ance[CPU]) == (120.0, 7.25, 100.25, 9 * CPU_SECONDS)
    assert ance[TOTAL_GPU] == ance[TRAIN_GPU] + ance[OTHER_GPU]


def test_the_scored_run_and_its_score_are_not_costs(plan):
    row = next(row for row in plan.report.params["rows"] if row["variant"] == "star")
    stages = [entry["stage"] for entry in row["costs"]]
    assert "score" not in stages and stages.count("retrieve") == 1  # the mining run, not the test run
    assert len({entry["input"] for entry in row["costs"]}) == len(row["costs"])


def test_upstream_lists_each_artifact_once_upstream_first(plan):
    roles = plan.experiments["ance/seed-1"]
    nodes = upstream([roles["ance-1"], roles["ance-0"]])
    keys = [node.key for node in nodes]
    assert len(keys) == len(set(keys)) and keys[-1] == roles["ance-1"].key
    assert keys.index(roles["warmup"].key) < keys.index(roles["ance-0"].key) < keys.index(roles["ance-1-encode-0"].key)


def test_stage_seconds_fall_back_to_the_trainers_seconds():
    assert stage_seconds({"seconds": 7.5}) == 7.5 and stage_seconds({"resources": {"wall_s": 3}, "seconds": 7}) == 3
    assert stage_seconds({}) == 0.0
