"""ANCE through the DAG with a tiny model (`stages.pipeline.run_plan`, in process): each round trains from the last,
on negatives its predecessor mined, and the report puts every method's quality against its GPU seconds."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from stages.pipeline import run_plan

TRAIN = {"max_steps": 2, "batch_size": 4, "checkpoint_every": 0}


def test_ance_rounds_run_and_the_report_writes_the_efficiency_table(tmp_path, scifact_slice, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = {
        "dataset": {"path": str(scifact_slice)},
        "seeds": [7],
        "encoder": {"model": str(tiny_model_dir), "query_max_length": 16, "doc_max_length": 48},
        "encode": {"num_shards": 1, "batch_size": 32},
        "retrieve": {"top_k": 50},
        "mine": {"depth": 20},
        "warmup": TRAIN,
        "star": TRAIN,
        "ance": {"rounds": 1, "steps_per_round": 2},
        "experiments": [{"name": "star", "method": "star"}, {"name": "ance", "method": "ance"}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    assert run_plan.main(["--configfile", str(tmp_path / "config.yaml"), "--results", str(results)]) == 0

    ance = results / "runs" / "ance" / "seed-7"
    round_0 = (ance / "ance-0").resolve().name  # the artifact's key
    assert json.loads((ance / "ance-1" / "manifest.json").read_text())["inputs"]["init"]["key"] == round_0
    mined_by = json.loads((ance / "ance-1-retrieve-train" / "manifest.json").read_text())["inputs"]["model"]
    assert mined_by["key"] == round_0
    assert json.loads((ance / "ance-1" / "summary.json").read_text())["mode"] == "static"

    report = results / "runs" / "report"
    frame = pd.read_csv(report / "efficiency.csv").set_index("variant")
    assert (frame["GPU s total"] > 0).all() and (frame["GPU s train"] > 0).all()
    assert frame.loc["ance", "GPU s shared"] == frame.loc["star", "GPU s shared"]  # the one warm-up model
    assert (report / "efficiency.png").is_file() and "| ance |" in (report / "efficiency.md").read_text()
