"""Cluster submission: the workflow through workflow/profiles/slurm on a real one-node Slurm on this machine.

tests/slurm/setup.sh installs Slurm (Debian's 22.05) with munge and slurmdbd + MariaDB if missing and starts the
daemons; the test then runs prepare -> bm25 -> score and the dense zero-shot chain (corpus encoded in 2 shards ->
index -> retrieve -> score) through sbatch, checks Slurm's accounting records of those jobs (GPU rules got a GPU
from the node's two fake GPUs, the others none), and compares every
artifact with a local run (no profile) of the same config. Needs root; without it the test is skipped. Under
CI=true a failed Slurm setup fails the test with the setup log (a skip there would hide a broken cluster test).

HARDNEG_SLURM_KEEP=1 leaves the daemons running afterwards (the next run then starts in seconds).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from stages.core.declarations import STAGES
from stages.core.store import hash_tree
from test_workflow import ENV, planned_jobs, snakemake, write_config

ROOT = Path(__file__).resolve().parent.parent
SLURM_DIR = Path(__file__).resolve().parent / "slurm"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
TEST_MEM_MB = 1500  # per job on the test node; the profile's cluster values exceed a small machine's memory
SETUP_TIMEOUT_S = 600


def log_tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node Slurm: yields the setup log and its wall time; stops the daemons afterwards."""
    if os.geteuid() != 0:
        pytest.skip("not root: tests/slurm/setup.sh installs packages and starts the Slurm daemons")
    started = time.monotonic()
    try:
        setup = subprocess.run(
            ["bash", str(SLURM_DIR / "setup.sh")], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S
        )
        output, code = setup.stdout + setup.stderr, setup.returncode
    except subprocess.TimeoutExpired as error:
        output = f"{error.stdout or ''}{error.stderr or ''}\nsetup.sh ran past {SETUP_TIMEOUT_S}s"
        code = -1
    if code != 0:
        reason = f"Slurm could not be set up (tests/slurm/setup.sh exit {code}):\n{log_tail(output)}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    yield {"log": output, "setup_s": time.monotonic() - started}
    if os.environ.get("HARDNEG_SLURM_KEEP") != "1":
        subprocess.run(["bash", str(SLURM_DIR / "teardown.sh")], capture_output=True, text=True, timeout=120)


def zeroshot_config(workdir: Path, dataset: Path, model: Path) -> None:
    """BM25 and the untrained dense encoder: prepare, bm25, encode x2 shards, index, retrieve, score x2, report."""
    write_config(
        workdir,
        dataset,
        [{"name": "bm25", "method": "bm25"}, {"name": "zeroshot", "method": "zeroshot"}],
        encoder={"model": str(model), "query_max_length": 16, "doc_max_length": 48},
        encode={"num_shards": 2, "batch_size": 32},
        retrieve={"top_k": 50},
    )


def workflow_rules() -> set[str]:
    from stages.core.declarations import STAGES

    return {stage.rule for stage in STAGES.values()}


def test_profile_asks_for_gpus_on_a_gpu_partition():
    """The shipped profile: GPU rules ask for a GPU, CPUs per GPU, memory and time on a (placeholder) partition."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for rule in (stage.rule for stage in STAGES.values() if stage.gpu):  # every GPU rule the declarations make
        resources = profile["set-resources"][rule]
        assert resources["gpu"] == 1 and resources["cpus_per_gpu"] >= 1 and "CHANGE-ME" in resources["slurm_partition"]
        assert resources["mem_mb"] > 0 and resources["runtime"] > 0
    assert "gpu" not in profile["set-resources"]["index_build"]  # faiss-cpu: a CPU job with lots of memory
    assert set(profile["set-resources"]) | set(profile["set-threads"]) <= workflow_rules()  # no renamed rules


def profile_for_this_node(path: Path) -> Path:
    """The shipped profile, fitted to the one-node test cluster; everything else (executor, settings) as shipped.

    No partition (the node's only partition is the default), one CPU per GPU (the node has 2 CPUs and 2 fake GPUs),
    memory within the node,
    the rules' own threads (as in the local run: OMP_NUM_THREADS follows threads), fast status checks, and the Slurm
    logs of successful jobs kept (.snakemake/slurm_logs/ in the pytest tmp dir) for a look after a failure.
    """
    fitted = yaml.safe_load((PROFILE / "config.yaml").read_text())
    for rule in sorted(workflow_rules()):  # every rule, also those keeping their own mem_mb: a job must fit the node
        resources = fitted["set-resources"].setdefault(rule, {})
        resources.pop("slurm_partition", None)
        if "gpu" in resources:
            resources["cpus_per_gpu"] = 1
        resources["mem_mb"] = TEST_MEM_MB
    fitted.pop("set-threads", None)
    fitted["default-resources"] = {**fitted["default-resources"], "mem_mb": TEST_MEM_MB, "slurm_account": "root"}
    fitted.update({
        "jobs": 4,
        "latency-wait": 5,
        "slurm-status-command": "sacct",  # what the plugin picks on a cluster with slurmdbd; explicit here
        "slurm-init-seconds-before-status-checks": 2,
        "slurm-keep-successful-logs": True,
    })  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(fitted, sort_keys=False))
    return path


def slurm_records(run_id: str, since: datetime, expected: int) -> list[dict[str, str]]:
    """Slurm's accounting records (sacct via slurmdbd) of the run's jobs; waits briefly for slurmdbd to catch up."""
    fields = ["JobIDRaw", "JobName", "Comment", "State", "ExitCode", "WorkDir", "NodeList", "AllocTRES"]
    command = [
        "sacct", "-X", "-n", "-P", "--name", run_id, "-S", f"{since:%Y-%m-%dT%H:%M:%S}", "-o", ",".join(fields),
    ]  # fmt: skip
    rows: list[dict[str, str]] = []
    for _ in range(30):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
        if len(rows) >= expected and all(r["State"] not in ("PENDING", "RUNNING") for r in rows):
            break
        time.sleep(1)
    return rows


TIMING = re.compile(r"(^|_)seconds$|_per_s$|^resources$| s( |$)")  # fields that differ on every run (report: "GPU s train")
MEASURED = re.compile(r"efficiency\.\w+")  # the report's quality-against-seconds table and plot


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMING.search(k)}
    return [without_timings(v) for v in value] if isinstance(value, list) else value


def artifacts_by_stage(workdir: Path) -> dict[tuple[str, str], dict[str, object]]:
    """(stage, key) -> {file: sha256} of every artifact under results/<stage>/<key>/; for a .json file its content
    less speed measurements. Manifests are left out: they hold host names, times and the same files' hashes."""
    found = {}
    for manifest in sorted((workdir / "results").glob("*/*/manifest.json")):
        artifact = manifest.parent
        if artifact.is_symlink() or not re.fullmatch(r"[0-9a-f]{16}", artifact.name):
            continue  # results/runs/ pointers
        files: dict[str, object] = {k: v for k, v in hash_tree(artifact).items() if not MEASURED.fullmatch(k)}
        for name in files:
            if name.endswith(".json"):
                files[name] = without_timings(json.loads((artifact / name).read_text()))
        found[(artifact.parent.name, artifact.name)] = files
    return found


def test_workflow_through_slurm_matches_a_local_run(slurm_cluster, tmp_path, scifact_slice, tiny_model_dir, capsys):
    started = time.monotonic()
    cluster_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    for workdir in (cluster_dir, local_dir):
        workdir.mkdir()
        zeroshot_config(workdir, scifact_slice, tiny_model_dir)
    jobs = planned_jobs(cluster_dir)
    assert jobs == Counter(
        prepare_dataset=1, bm25_index=1, bm25_retrieve=1, tokenize_corpus=1, encode_corpus=2, index_build=1, retrieve_dense=1, score_run=2,
        report_results=1,
    )  # fmt: skip

    # jobs run `python -m stages.<stage>` with the submitter's environment (sbatch --export=ALL): the venv's python
    probe = subprocess.run(
        ["sbatch", "--wait", "--parsable", "-o", str(tmp_path / "probe.out"), "--wrap", "command -v python; pwd"],
        capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert (tmp_path / "probe.out").read_text().split() == [str(Path(sys.executable).parent / "python"), str(tmp_path)]

    profile = profile_for_this_node(tmp_path / "profile" / "slurm")
    submitted = datetime.now() - timedelta(minutes=1)
    cluster_started = time.monotonic()
    result = snakemake(cluster_dir, "--profile", str(profile))
    cluster_s = time.monotonic() - cluster_started
    output = result.stdout + result.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    submissions = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", output)
    assert len(submissions) == sum(jobs.values()), output

    # Slurm's own records: one job per planned job, named after the run, the rule and key in the comment
    records = slurm_records(run_id, submitted, len(submissions))
    assert sorted(r["JobIDRaw"] for r in records) == sorted(submissions), records
    assert all(r["State"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in records), records
    assert {r["WorkDir"] for r in records} == {str(cluster_dir)}
    by_comment = [re.fullmatch(r"rule_(\w+)_wildcards_([0-9a-f]{16})", r["Comment"]) for r in records]
    assert all(by_comment), records
    assert Counter(m.group(1) for m in by_comment) == jobs
    # the profile's GPU rules got a GPU from Slurm (the node's fake gres), the others none
    gpu_rules = {rule for rule, res in yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"].items()
                 if res.get("gpu")}  # fmt: skip
    for record, match in zip(records, by_comment):
        assert ("gres/gpu=1" in record["AllocTRES"]) == (match.group(1) in gpu_rules), record

    local_started = time.monotonic()
    snakemake(local_dir)
    local_s = time.monotonic() - local_started

    # the same artifacts: keys (stage, params, inputs) and every file byte for byte (runs, metrics, embeddings), but
    # the speed measurements in summary.json
    cluster_artifacts, local_artifacts = artifacts_by_stage(cluster_dir), artifacts_by_stage(local_dir)
    assert cluster_artifacts.keys() == local_artifacts.keys()
    for artifact, files in cluster_artifacts.items():
        assert files == local_artifacts[artifact], f"{artifact} differs between the Slurm and the local run"
    assert {m.group(2) for m in by_comment} == {key for _, key in cluster_artifacts}  # each made by a Slurm job
    assert sum(1 for stage, _ in cluster_artifacts if stage == "encode") == 2
    for experiment in ("bm25", "zeroshot"):
        metrics = [
            json.loads((d / "results" / "runs" / experiment / "score-test" / "metrics.json").read_text())
            for d in (cluster_dir, local_dir)
        ]
        assert metrics[0] == metrics[1] and 0 <= metrics[0]["metrics"]["nDCG@10"]["mean"] <= 1

    test_s = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\n[test_slurm] setup.sh {slurm_cluster['setup_s']:.1f}s; Slurm run {cluster_s:.1f}s "
            f"({len(records)} sbatch jobs, run {run_id}); local run {local_s:.1f}s; "
            f"test {test_s:.1f}s; setup + test {slurm_cluster['setup_s'] + test_s:.1f}s"
        )

