"""The dense half of the DAG through real snakemake with a tiny model: zero-shot, warm-up, mining, STAR, PQ."""

from __future__ import annotations

import json
from collections import Counter

from test_workflow import ENV, planned_jobs, snakemake, write_config

TRAIN = {"max_steps": 2, "batch_size": 4, "checkpoint_every": 0}


def dense_config(workdir, dataset, model, **overrides) -> None:
    experiments = [
        {"name": "zeroshot", "method": "zeroshot"},
        {"name": "star", "method": "star", "export": True},
        {"name": "star-pq", "method": "star", "params": {"index": {"kind": "pq"}}},
        {"name": "inbatch", "method": "star", "params": {"star": {"negatives": "inbatch", "init": "base"}}},
    ]
    sections = {
        "seeds": [7],
        "encoder": {"model": str(model), "query_max_length": 16, "doc_max_length": 48},
        "encode": {"num_shards": 2, "batch_size": 32},
        "index": {"pq_m": 8, "pq_bits": 4},
        "retrieve": {"top_k": 50},
        "mine": {"source": "warmup", "depth": 20},
        "warmup": TRAIN,
        "star": TRAIN,
    }
    for name, values in overrides.items():
        sections[name] = {**sections[name], **values}
    write_config(workdir, dataset, experiments, **sections)


def test_dense_dag_runs_and_a_star_change_reruns_star_and_below_only(tmp_path, scifact_slice, tiny_model_dir):
    dense_config(tmp_path, scifact_slice, tiny_model_dir)
    first = planned_jobs(tmp_path)
    # encode: zero-shot, warm-up (mining), STAR (shared by star and star-pq), inbatch: 4 models x 2 shards
    assert first == Counter(
        prepare_dataset=1, bm25_index=1, bm25_retrieve=1, mine_negatives=2, train_warmup=1, train_star=2, tokenize_corpus=1,
        encode_corpus=8, index_build=5, retrieve_dense=5, score_run=4, report_results=1, export_retriever=1,
    )  # fmt: skip
    # two (fake) GPUs: jobs claim their own; STAR gets both and trains under torchrun (2 gloo processes on the CPU)
    two_gpus = ENV | {"HARDNEG_GPU_IDS": "0,1", "HARDNEG_GPU_LOCKS": str(tmp_path / "gpu-locks")}
    snakemake(tmp_path, "--resources", "gpu=2", "--set-resources", "train_star:gpu=2", env=two_gpus)
    assert planned_jobs(tmp_path) == Counter()  # resources are not part of any artifact's identity

    runs = tmp_path / "results" / "runs"
    for experiment in ("zeroshot", "star/seed-7", "star-pq/seed-7", "inbatch/seed-7"):
        metrics = json.loads((runs / experiment / "score-test" / "metrics.json").read_text())
        assert 0 <= metrics["metrics"]["nDCG@10"]["mean"] <= 1
    star, star_pq = runs / "star" / "seed-7", runs / "star-pq" / "seed-7"
    assert (star / "star").resolve() == (star_pq / "star").resolve()  # one training run for both indexes
    assert json.loads((star_pq / "index" / "summary.json").read_text())["kind"] == "pq"
    init = json.loads((star / "star" / "manifest.json").read_text())["inputs"]
    assert {"prepared", "negatives", "init"} <= set(init)  # STAR starts from the warm-up model, as in the paper
    assert (star / "star" / "loss.png").is_file() and (star / "star" / "train_log.parquet").is_file()
    assert json.loads((star / "star" / "summary.json").read_text())["processes"] == 2
    assert json.loads((star / "warmup" / "summary.json").read_text())["processes"] == 1
    assert (star / "export" / "router_config.json").is_file() and (star / "export" / "README.md").is_file()
    table = (runs / "report" / "results.md").read_text()
    assert all(f"| {variant} |" in table for variant in ("zeroshot", "star (reference)", "star-pq", "inbatch"))
    assert {"loss_curves.png", "index_kinds.png"} <= {p.name for p in (runs / "report").iterdir()}
    snakemake(tmp_path, "--report", "report.html")  # the same plots in snakemake's HTML report
    assert (tmp_path / "report.html").stat().st_size > 10000

    dense_config(tmp_path, scifact_slice, tiny_model_dir, star={"temperature": 0.1})
    # the warm-up model, its mining run and zero-shot are untouched; STAR and inbatch retrain and re-encode
    assert planned_jobs(tmp_path) == Counter(
        train_star=2, encode_corpus=4, index_build=3, retrieve_dense=3, score_run=3, report_results=1,
        export_retriever=1,
    )
