"""benchmarks/train_throughput.py on the CPU with a tiny random BERT: every configuration runs, bare and stage, on the
same token batches, with positive numbers (a smoke test; the measurement itself is for a GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from train_throughput import main  # noqa: E402

EXPECTED = [
    "warmup@4", "star_pairwise@4", "star_listwise_5neg@4", "warmup@2", "star_pairwise@2", "star_listwise_5neg@2",
    "adore_flat@2", "adore_pq@2",
]
RATES = ("step_s", "queries_per_s", "real_tokens_per_s", "padded_tokens_per_s", "tflops", "share_of_peak")


def test_every_configuration_measured(tiny_model_dir, tmp_path, capsys, monkeypatch):
    # one thread (the training loop's and the bare model's): on a busy 2-core machine two threads of a tiny model
    # mostly wait for each other; the numbers are not the point here
    monkeypatch.setattr("stages.ml.training.CPU_THREADS", 1)
    out = tmp_path / "train_throughput.json"
    report = main([
        "--quick", "--device", "cpu", "--model", str(tiny_model_dir), "--warmup-steps", "1", "--steps", "1",
        "--paper-star-batch", "4", "--our-batch", "2", "--paper-adore-batch", "2", "--adore-docs", "3000",
        "--passages", "400", "--queries", "16", "--doc-max-length", "48", "--budget-s", "1000", "--out", str(out),
    ])
    printed = json.loads(capsys.readouterr().out)  # stdout is the one JSON object
    assert printed == json.loads(out.read_text()) == json.loads(json.dumps(report, default=float))
    assert report["errors"] == {} and report["skipped"] == []
    assert list(report["configurations"]) == EXPECTED
    for key in ("device", "torch", "stage_sources_sha256", "model_config", "texts", "includes"):
        assert report[key], key
    for name, result in report["configurations"].items():
        if "adore" in name:  # its queries are tokenized once, before the first step
            assert result["stage_saw_the_same_batches"] is None, name
        else:
            assert result["stage_saw_the_same_batches"], name
        trainer = {"warmup": "train_warmup", "star": "train_star", "adore": "train_adore"}[name.split("@")[0].split("_")[0]]
        assert result["trainer"] == trainer, name
        assert result["stage_over_bare_step_time"] > 0 and result["stage_share_of_bare_speed"] > 0, name
        assert all(result["tokens_per_step"][k] > 0 for k in ("texts", "real", "padded", "model_gflop")), name
        assert result["tokens_per_step"]["real"] <= result["tokens_per_step"]["padded"], name
        for run in ("bare", "stage"):
            for key in RATES:
                assert result[run][key] > 0, (name, run, key)
        negatives = 5 if "listwise" in name else 1  # STAR: queries, their positives and negatives
        expected_texts = result["batch_size"] * (1 if "adore" in name else 2 + negatives)
        assert result["tokens_per_step"]["texts"] == expected_texts, name
    assert report["configurations"]["adore_pq@2"]["index"]["pq_m"] == 4  # dim 32 / 8
    assert report["configurations"]["adore_flat@2"]["index"]["documents"] == 3000
