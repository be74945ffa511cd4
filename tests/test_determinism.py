"""One artifact key, one result: CPU training gives the same weights whatever the thread count, and so under
`python -m stages.pipeline.run_plan` (in-process, all cores) and `snakemake --cores 1` (OMP_NUM_THREADS=1)."""

from __future__ import annotations

import subprocess
import sys

import torch
from test_train_star import tiny_params
from test_workflow import ENV, ROOT, write_config

from stages.pipeline.dag import Node, Plan
from stages.pipeline.config import load_config
from stages.pipeline.run_plan import ordered, run_node
from stages.ml.star_training import train_star

WEIGHTS = "model/model.safetensors"


def test_star_weights_do_not_depend_on_the_thread_count(prepared, tiny_model_dir, tmp_path):
    before, weights = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            params = tiny_params(tiny_model_dir, negatives="inbatch")
            train_star(params, {"prepared": prepared}, tmp_path / str(threads))
            weights.append((tmp_path / str(threads) / WEIGHTS).read_bytes())
            assert torch.get_num_threads() == threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert weights[0] == weights[1]


def ancestors(node: Node) -> set[str]:
    found = {node.key}
    for item in node.inputs.values():
        if isinstance(item, Node):
            found |= ancestors(item)
    return found


def test_run_plan_and_snakemake_with_one_core_train_the_same_star(tmp_path, scifact_slice, tiny_model_dir):
    train = {"negatives": "inbatch", "init": "base", "max_steps": 3, "batch_size": 4, "checkpoint_every": 0}
    sections = {
        "seeds": [7],
        "encoder": {"model": str(tiny_model_dir), "query_max_length": 16, "doc_max_length": 32},
        "star": train | {"learning_rate": 1e-3},
    }
    for name in ("run_plan", "snakemake"):
        (tmp_path / name).mkdir()
        write_config(tmp_path / name, scifact_slice, [{"name": "star", "method": "star"}], **sections)
    results = tmp_path / "run_plan" / "results"
    plan = Plan(load_config(tmp_path / "run_plan" / "config.yaml"), results)
    star = plan.experiments["star/seed-7"]["star"]
    assert torch.get_num_threads() > 1  # in-process: all cores, where snakemake --cores 1 gives its job one
    (results / "benchmarks").mkdir(parents=True)
    for node in [n for n in ordered(plan) if n.key in ancestors(star)]:  # prepare, STAR
        run_node(node, results)
    target = f"results/train_star/{star.key}"
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1", target]
    done = subprocess.run(command, cwd=tmp_path / "snakemake", capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr  # a key the Snakefile's plan does not make fails here
    snakemade = tmp_path / "snakemake" / target / WEIGHTS
    assert (results / "train_star" / star.key / WEIGHTS).read_bytes() == snakemade.read_bytes()
