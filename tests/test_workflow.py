"""Real snakemake runs in a temp directory: the content-addressing properties of the DAG."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Rules run `python -m stages.<stage>`: the interpreter running the tests must be first on PATH.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def write_config(workdir: Path, dataset: Path, experiments: list[dict], **sections) -> None:
    config = {
        "dataset": {"path": str(dataset), "dev_fraction": 0.25},
        "evaluate": {"splits": ["test"]},
        "score": {"bootstrap_samples": 200},
        "bm25": {"top_k": 100, "k1": 1.5},
        "experiments": experiments,
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    result = subprocess.run(
        command + ["--cores", "2", *args], capture_output=True, text=True, cwd=workdir, env=env or ENV
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def planned_jobs(workdir: Path) -> Counter:
    """Jobs a dry run would run, by rule (empty when there is nothing to do)."""
    output = snakemake(workdir, "-n").stdout
    jobs = Counter()
    table = re.search(r"job\s+count\n[-\s]+\n(.*?)\ntotal", output, re.DOTALL)
    for line in table.group(1).splitlines() if table else []:
        rule, count = line.split()
        jobs[rule] = int(count)
    jobs.pop("all", None)
    return jobs


@pytest.fixture
def workdir(tmp_path, scifact_slice) -> Path:
    write_config(tmp_path, scifact_slice, [{"name": "bm25", "method": "bm25"}])
    return tmp_path


def artifacts(workdir: Path, stage: str) -> list[str]:
    folder = workdir / "results" / stage
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_complete_run_leaves_nothing_to_do_and_pointers(workdir):
    assert planned_jobs(workdir) == Counter(
        prepare_dataset=1, bm25_index=1, bm25_retrieve=1, score_run=1, report_results=1
    )
    snakemake(workdir)
    assert planned_jobs(workdir) == Counter()
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    pointer = workdir / "results" / "runs" / "bm25" / "score-test"
    metrics = json.loads((pointer / "metrics.json").read_text())
    assert 0 < metrics["metrics"]["nDCG@10"]["mean"] <= 1
    manifest = json.loads((pointer / "manifest.json").read_text())
    assert manifest["stage"] == "score" and set(manifest["inputs"]) == {"prepared", "run"}


def test_param_change_reruns_descendants_only_and_revert_reruns_nothing(workdir, scifact_slice):
    snakemake(workdir)
    write_config(workdir, scifact_slice, [{"name": "bm25", "method": "bm25"}], bm25={"k1": 1.2})
    # k1 is the index's: the index, the run over it, the score and the report
    assert planned_jobs(workdir) == Counter(bm25_index=1, bm25_retrieve=1, score_run=1, report_results=1)
    snakemake(workdir)
    assert len(artifacts(workdir, "bm25")) == 2 and len(artifacts(workdir, "prepare")) == 1

    write_config(workdir, scifact_slice, [{"name": "bm25", "method": "bm25"}], score={"bootstrap_samples": 300})
    assert planned_jobs(workdir) == Counter(score_run=1, report_results=1)  # scoring knob: scoring (and report)

    write_config(workdir, scifact_slice, [{"name": "bm25", "method": "bm25"}])  # back to the first config
    assert planned_jobs(workdir) == Counter()


def test_the_html_report_holds_the_table_and_each_plot_with_its_own_caption(workdir, scifact_slice):
    tuned = {"name": "bm25-k1.2", "method": "bm25", "params": {"bm25": {"k1": 1.2}}}
    experiments = [{"name": "bm25", "method": "bm25"}, tuned]
    write_config(workdir, scifact_slice, experiments, report={"reference": "bm25"})
    snakemake(workdir)
    snakemake(workdir, "--report", "report.html")
    page = (workdir / "report.html").read_text()
    embedded = dict(re.findall(r"filename=([\w.]+);base64,([A-Za-z0-9+/=]+)", page))
    assert {"results.html", "metrics_by_variant.png"} <= set(embedded)
    table = base64.b64decode(embedded["results.html"]).decode()
    assert "<td>bm25 (reference)</td>" in table and "<td>bm25-k1.2</td>" in table and "MAP" in table
    assert "The results table" in page and "Each measure in its own panel" in page
    assert "flat or PQ" not in page and "Training of each" not in page  # no such plots in a BM25-only run


def test_experiments_share_upstream_artifacts(workdir, scifact_slice):
    experiments = [
        {"name": "bm25", "method": "bm25"},
        {"name": "bm25-k1.2", "method": "bm25", "params": {"bm25": {"k1": 1.2}}},
        {"name": "bm25-again", "method": "bm25"},
    ]
    write_config(workdir, scifact_slice, experiments)
    assert planned_jobs(workdir) == Counter(
        prepare_dataset=1, bm25_index=2, bm25_retrieve=2, score_run=2, report_results=1
    )
    snakemake(workdir)
    assert len(artifacts(workdir, "prepare")) == 1
    runs = workdir / "results" / "runs"
    assert (runs / "bm25" / "prepare").resolve() == (runs / "bm25-k1.2" / "prepare").resolve()
    assert (runs / "bm25" / "score-test").resolve() == (runs / "bm25-again" / "score-test").resolve()
    assert (runs / "bm25" / "bm25-test").resolve() != (runs / "bm25-k1.2" / "bm25-test").resolve()


def test_verify_reports_a_file_changed_since_written(workdir):
    snakemake(workdir)
    verify = [sys.executable, "-m", "stages.core.store", "verify"]
    clean = subprocess.run(verify, cwd=workdir, capture_output=True, text=True)
    assert clean.returncode == 0 and "5 artifacts checked, 0 problems" in clean.stdout
    run_file = workdir / "results" / "runs" / "bm25" / "bm25-test" / "run.trec"
    run_file.write_text(run_file.read_text().replace(" 1 ", " 2 ", 1))
    dirty = subprocess.run(verify, cwd=workdir, capture_output=True, text=True)
    assert dirty.returncode == 1 and "run.trec: changed on disk since written" in dirty.stdout


def test_gc_lists_then_removes_artifacts_the_config_no_longer_reaches(workdir, scifact_slice):
    snakemake(workdir)
    old_bm25 = artifacts(workdir, "bm25")
    write_config(workdir, scifact_slice, [{"name": "bm25", "method": "bm25"}], bm25={"k1": 0.9})
    snakemake(workdir)
    gc = [sys.executable, "-m", "stages.pipeline.prune"]
    listing = subprocess.run(gc, cwd=workdir, capture_output=True, text=True)
    assert listing.returncode == 0 and f"bm25/{old_bm25[0]}" in listing.stdout and "--yes" in listing.stdout
    assert old_bm25[0] in artifacts(workdir, "bm25")  # listing alone removes nothing
    subprocess.run(gc + ["--yes"], cwd=workdir, check=True, capture_output=True)
    assert old_bm25[0] not in artifacts(workdir, "bm25") and len(artifacts(workdir, "bm25")) == 1
    assert planned_jobs(workdir) == Counter()


def test_bad_config_stops_with_the_key_and_what_is_allowed(workdir, scifact_slice):
    write_config(workdir, scifact_slice, [{"name": "x", "method": "bm25", "params": {"bm25": {"k2": 1}}}])
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "-n"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert result.returncode != 0
    assert "params.bm25.k2 is not a bm25 parameter" in result.stderr and "k1" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_plan_makes_the_same_artifacts_without_snakemake(workdir):
    """The GPU box has no Snakemake: stages.pipeline.run_plan runs the same DAG; Snakemake then finds nothing to do."""
    result = subprocess.run([sys.executable, "-m", "stages.pipeline.run_plan"], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "5 of 5 artifacts to make" in result.stdout
    assert (workdir / "results" / "runs" / "bm25" / "score-test" / "metrics.json").is_file()
    again = subprocess.run([sys.executable, "-m", "stages.pipeline.run_plan", "-n"], cwd=workdir, capture_output=True, text=True)
    assert "0 of 5 artifacts to make" in again.stdout


def test_a_configfile_replaces_config_yaml_as_run_plan_reads_it(workdir, scifact_slice):
    """`snakemake --configfile other.yaml` must plan what `run_plan --configfile other.yaml` plans: config.yaml's
    values must not leak into keys the other file leaves out (here config.yaml's BM25 depth and k1)."""
    other = workdir / "other.yaml"
    other.write_text(yaml.safe_dump({
        "dataset": {"path": str(scifact_slice), "dev_fraction": 0.25},
        "evaluate": {"splits": ["test"]},
        "experiments": [{"name": "bm25", "method": "bm25"}],
    }))  # fmt: skip
    dry = snakemake(workdir, "-n", "--configfile", str(other)).stdout
    planned = set(re.findall(r"results/(\w+)/([0-9a-f]{16})\b", dry))
    listing = subprocess.run(
        [sys.executable, "-m", "stages.pipeline.run_plan", "-n", "--configfile", str(other)],
        cwd=workdir, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    expected = set(re.findall(r"\] (\w+) ([0-9a-f]{16})$", listing, re.MULTILINE))
    assert expected and planned == expected
    merged = snakemake(workdir, "-n", "--configfile", str(workdir / "config.yaml"), str(other)).stdout
    assert set(re.findall(r"results/(\w+)/([0-9a-f]{16})\b", merged)) != expected  # both named: merged in order
