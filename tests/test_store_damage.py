"""A damaged artifact is never read (set aside and rebuilt by the next run); gc takes the configs runs were given."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.pipeline import prune
from stages.core import store
from stages.pipeline.dag import Plan

ROOT = Path(__file__).resolve().parent.parent
# Rules run `python -m stages.<stage>`: the interpreter running the tests must be first on PATH.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def workdir(tmp_path, scifact_slice, monkeypatch) -> Path:
    config = {
        "dataset": {"path": str(scifact_slice), "dev_fraction": 0.25},
        "evaluate": {"splits": ["test"]},
        "score": {"bootstrap_samples": 200},
        "bm25": {"top_k": 100, "k1": 1.5},
        "experiments": [{"name": "bm25", "method": "bm25"}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump({"bm25": {"k1": 1.2}}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def plan_paths(*files: str) -> set[Path]:
    from stages.pipeline.config import load_configs

    return {node.path() for node in Plan(load_configs([Path(f) for f in files]), dry_run=True).nodes()}


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0 or not check, result.stdout + result.stderr
    return result


def snakemake(*args: str) -> subprocess.CompletedProcess:
    return run("snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2", *args)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def removals(output: str) -> set[str]:
    return {line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("remove ")}


def test_gc_keeps_what_a_run_with_layered_config_files_reaches(workdir, capsys):
    alone, layered = plan_paths("config.yaml"), plan_paths("config.yaml", "extra.yaml")
    assert len(alone & layered) == 1  # prepare is shared; extra.yaml's k1 changes the BM25 index, bm25, score and report
    for path in alone | layered:
        path.mkdir(parents=True)
    assert prune.main(["--configfile", "config.yaml", "extra.yaml"]) == 0
    out = capsys.readouterr().out
    assert "protected by config.yaml + extra.yaml: 5 artifacts (5 in its plan)" in out
    assert removals(out) == {str(p) for p in alone - layered} and "rerun with --yes" in out
    assert all(p.is_dir() for p in alone | layered)  # nothing removed without --yes

    assert prune.main(["--configfile", "config.yaml", "--configfile", "config.yaml", "extra.yaml"]) == 0
    out = capsys.readouterr().out  # two runs: the union of what they reach is kept
    assert "protected by config.yaml: 5 artifacts" in out and "protected by config.yaml + extra.yaml" in out
    assert removals(out) == set() and "nothing to remove" in out

    killed, running = Path(f"results/bm25/.tmp-k1-{dead_pid()}"), Path(f"results/bm25/.tmp-k2-{os.getpid()}")
    killed.mkdir(), running.mkdir()
    assert prune.main(["--yes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no --configfile given: keeping what config.yaml reaches\nprotected by config.yaml: 5")
    assert removals(out) == {str(p) for p in layered - alone} | {str(killed)} and out.endswith("removed 5 folders\n")
    assert f"keep {running}: an unfinished write of process {os.getpid()}, which still runs" in out
    assert all(p.is_dir() for p in alone) and not any(p.exists() for p in layered - alone)
    assert running.is_dir() and not killed.exists()


def test_gc_names_a_bad_config_without_a_traceback(workdir, capsys):
    assert prune.main(["--configfile", "config.yaml", "missing.yaml"]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err


def test_run_plan_layers_config_files_as_snakemake_does(workdir):
    listing = run("stages.pipeline.run_plan", "-n", "--configfile", "config.yaml", "extra.yaml").stdout
    planned = set(re.findall(r"\] (\w+) ([0-9a-f]{16})$", listing, re.MULTILINE))
    dry = snakemake("-n", "--configfile", "config.yaml", "extra.yaml").stdout
    assert planned and set(re.findall(r"results/(\w+)/([0-9a-f]{16})\b", dry)) == planned
    assert planned == {(p.parent.name, p.name) for p in plan_paths("config.yaml", "extra.yaml")}


def test_a_damaged_artifact_is_set_aside_by_the_next_run_and_rebuilt(workdir, capsys):
    assert "5 of 5 artifacts to make" in run("stages.pipeline.run_plan").stdout
    [artifact] = [p for p in Path("results/bm25").iterdir() if not p.name.startswith(".")]
    with open(artifact / "run.parquet", "ab") as handle:
        handle.write(b"\0")  # e.g. a disk error, or a copy gone wrong
    assert "run.parquet" in store.damage(artifact)

    dry = run("stages.pipeline.run_plan", "-n")
    assert "0 of 5 artifacts to make" in dry.stdout and artifact.is_dir()  # a dry run moves nothing
    assert f"warning: damaged artifact {artifact}" in dry.stderr and "a run moves it aside" in dry.stderr
    dry = snakemake("-n")
    assert artifact.is_dir() and f"warning: damaged artifact {artifact}" in dry.stderr

    again = run("stages.pipeline.run_plan")
    assert "1 of 5 artifacts to make" in again.stdout and "moved aside to" in again.stderr
    [aside] = [p for p in artifact.parent.iterdir() if p.name.startswith(f".damaged-{artifact.name}-")]
    assert store.verify_artifact(artifact) == [] and store.damage(artifact) is None  # rebuilt, intact
    assert store.main(["verify"]) == 0
    assert f"{aside}: leftover, a damaged artifact a run set aside" in capsys.readouterr().out

    (artifact / "run.trec").unlink()  # through Snakemake: set aside and rebuilt too
    done = snakemake()
    assert "moved aside to" in done.stderr and store.damage(artifact) is None
    assert prune.main(["--yes"]) == 0
    out = capsys.readouterr().out
    assert f"remove {aside}: a damaged artifact a run set aside" in out and "removed 2 folders" in out
    assert [p.name for p in artifact.parent.iterdir()] == [artifact.name]
