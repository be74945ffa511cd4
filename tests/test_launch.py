"""The GPU launcher: each concurrent job gets its own devices; more than one GPU runs the stage under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stages.core import launch


def test_concurrent_claims_get_disjoint_devices(tmp_path):
    pool = ["0", "1", "2"]
    first = launch.claim_gpus(2, pool, tmp_path, timeout=0)
    second = launch.claim_gpus(1, pool, tmp_path, timeout=0)
    assert list(first) == ["0", "1"] and list(second) == ["2"]
    with pytest.raises(TimeoutError):
        launch.claim_gpus(1, pool, tmp_path, timeout=0)
    for fd in first.values():
        os.close(fd)  # a finished job releases its devices
    assert list(launch.claim_gpus(2, pool, tmp_path, timeout=0)) == ["0", "1"]


def test_claim_leaves_nothing_held_when_too_few_are_free(tmp_path):
    pool = ["0", "1"]
    held = launch.claim_gpus(1, ["1"], tmp_path, timeout=0)
    assert launch.try_claim(2, pool, tmp_path) is None
    assert list(launch.claim_gpus(1, pool, tmp_path, timeout=0)) == ["0"]  # device 0 was not left locked
    assert list(held) == ["1"]


def test_asking_for_more_gpus_than_exist_names_the_fix(tmp_path):
    with pytest.raises(SystemExit, match="asks for 3 GPU"):
        launch.claim_gpus(3, ["0", "1"], tmp_path)


def test_stage_command_uses_torchrun_for_several_gpus():
    assert launch.stage_command("stages.train_star", ["out"], 1)[1:] == ["-m", "stages.train_star", "out"]
    command = launch.stage_command("stages.train_star", ["out"], 2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[-3:] == ["-m", "stages.train_star", "out"]


def run_launcher(tmp_path, gpus: int, **env: str) -> set[str]:
    """What each process the launcher started saw: 'CUDA_VISIBLE_DEVICES WORLD_SIZE' (one file per rank)."""
    seen = tmp_path / f"seen-{gpus}"
    seen.mkdir()
    (tmp_path / "probe.py").write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(seen)!r}, os.environ.get('RANK', '0')).write_text("
        "os.environ['CUDA_VISIBLE_DEVICES'] + ' ' + os.environ.get('WORLD_SIZE', '1'))\n"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    environment.update(HARDNEG_GPU_LOCKS=str(tmp_path / "locks"), PYTHONPATH=f"{tmp_path}{os.pathsep}{os.getcwd()}", **env)
    subprocess.run(
        [sys.executable, "-m", "stages.core.launch", f"--gpus={gpus}", "--", "probe"],
        env=environment, capture_output=True, text=True, timeout=120, check=True,
    )
    return {path.name + ": " + path.read_text() for path in seen.iterdir()}


def test_launcher_sets_the_devices_and_starts_one_process_per_gpu(tmp_path):
    assert run_launcher(tmp_path, 1, HARDNEG_GPU_IDS="5,7") == {"0: 5 1"}
    assert run_launcher(tmp_path, 2, HARDNEG_GPU_IDS="5,7") == {"0: 5,7 2", "1: 5,7 2"}  # torchrun: two ranks
    assert run_launcher(tmp_path, 0, HARDNEG_GPU_IDS="5,7") == {"0:  1"}  # a job without GPUs sees none


def test_run_plan_trains_on_several_gpus_through_the_launcher():
    from stages.pipeline.run_plan import stage_command

    assert stage_command("train_star", ["out"], 2)[1:] == ["-m", "stages.core.launch", "--gpus=2", "--", "stages.train_star", "out"]
    # as their rules: every GPU stage through the launcher (encode: one GPU a shard), CPU stages directly
    assert stage_command("encode", ["out"], 2)[1:] == ["-m", "stages.core.launch", "--gpus=1", "--", "stages.encode", "out"]
    assert stage_command("train_adore", ["out"], 1)[1:] == ["-m", "stages.core.launch", "--gpus=1", "--", "stages.train_adore", "out"]
    assert stage_command("score", ["out"], 2)[1:] == ["-m", "stages.score", "out"]
