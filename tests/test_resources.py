"""`stages.core.resources`: the summary's resources block and the threads a stage is given."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from stages.core.resources import Meter, available_threads


def test_block_has_wall_time_rates_and_this_stages_peak_memory():
    np.ones(64 * 2**20 // 8).sum()  # 64 MiB before the meter starts: not this stage's peak
    meter = Meter()
    time.sleep(0.05)
    summary = meter.merge({"rows": 3, "items": {"queries": 100}})
    block = summary["resources"]
    assert summary["rows"] == 3 and block["items"] == {"queries": 100}
    assert 0.05 <= block["wall_s"] < 5
    assert block["items_per_s"]["queries"] == pytest.approx(100 / block["wall_s"], rel=0.02)
    assert block["peak_rss_mib"] > 10 and block["peak_rss_children_mib"] >= 0
    if block["peak_rss_reset"]:
        allocated = Meter()
        np.ones(256 * 2**20 // 8).sum()
        peak = allocated.block()["peak_rss_mib"]
        assert peak >= block["peak_rss_mib"] + 200
        assert Meter().block()["peak_rss_mib"] < peak - 200  # the next stage does not inherit this peak
    assert block["peak_gpu_mib"] is None or block["peak_gpu_mib"] >= 0


def test_a_summary_without_items_still_gets_the_block():
    block = Meter().merge(None)["resources"]
    assert block["items"] == {} == block["items_per_s"] and block["threads"] == available_threads()


def test_threads_are_the_affinity_capped_by_omp_num_threads(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert available_threads() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 8))
    assert available_threads() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert available_threads() == cores


def test_fixed_seconds_are_the_process_start_up_to_the_first_stages_work_and_none_for_a_later_one(tmp_path):
    import json
    import subprocess
    import sys

    code = (
        "import json, time; from stages.core.resources import Meter, process_started\n"
        "time.sleep(0.3)\n"  # start-up the first stage's Meter sees as fixed
        "first = Meter().block(); second = Meter().block()\n"
        "print(json.dumps([first['fixed_s'], second['fixed_s'], time.time() - process_started()]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    first, second, age = json.loads(done.stdout)
    assert 0.3 <= first <= age + 0.05 and second == 0.0  # the start is known to a clock tick (10 ms)
