"""CPU-only stages take no GPU memory: their rules and run_plan's --isolate processes see no GPU, and bm25s' JAX is
kept on the CPU on every path (run_plan's in-process mode included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_workflow import ENV, write_config

from stages.pipeline import run_plan
from stages.core.declarations import STAGES
from stages.pipeline.dag import Node

HIDE_GPUS = "CUDA_VISIBLE_DEVICES= python -m stages."


def test_rules_of_cpu_stages_hide_the_gpus_and_gpu_rules_do_not():
    for stage in STAGES.values():
        assert stage.shell().startswith(HIDE_GPUS) != stage.gpu, f"{stage.rule}: CPU-only rules start with {HIDE_GPUS!r}"
        assert (stage.env_vars().get("CUDA_VISIBLE_DEVICES") == "") != stage.gpu, stage.name  # run_plan's processes


def test_run_plan_isolates_cpu_stages_without_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert run_plan.stage_env("bm25_index")["CUDA_VISIBLE_DEVICES"] == ""
    assert run_plan.stage_env("train_star")["CUDA_VISIBLE_DEVICES"] == "0,1"
    seen = {}

    def fake_run(command, env, **options):
        stage = next(part for part in command[2:] if part.startswith("stages.") and part != "stages.core.launch")
        seen[stage] = env["CUDA_VISIBLE_DEVICES"]  # a GPU stage's launcher then claims its devices among these
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(run_plan.subprocess, "run", fake_run)
    (tmp_path / "benchmarks").mkdir()
    for stage in ("score", "encode"):
        run_plan.run_node(Node(stage, {}, {}), tmp_path, isolate=True)
    assert seen == {"stages.score": "", "stages.encode": "0,1"}


def test_bm25s_never_starts_jax_on_a_gpu_even_in_process(tmp_path, scifact_slice):
    """A stand-in `jax` records JAX_PLATFORMS when imported (then fails, so bm25s goes on with numpy)."""
    fake, record = tmp_path / "fake", tmp_path / "jax-imports.txt"
    (fake / "jax").mkdir(parents=True)
    (fake / "jax" / "__init__.py").write_text(
        "import os\n"
        f"with open({str(record)!r}, 'a') as f:\n    f.write(os.environ.get('JAX_PLATFORMS', 'unset') + '\\n')\n"
        "raise ImportError('a stand-in for the test')\n"
    )
    write_config(tmp_path, scifact_slice, [{"name": "bm25", "method": "bm25"}])
    env = {k: v for k, v in ENV.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fake), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "stages.pipeline.run_plan"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(Path(record).read_text().split()) == {"cpu"}
