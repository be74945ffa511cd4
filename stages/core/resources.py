"""What a stage used, for a per-stage throughput table: wall time, items and items/s, peak host and GPU memory.

`stages.core.cli.run_stage` starts a `Meter` before the stage's work and merges `Meter.block(items)` into its
summary.json under ``resources``; a stage names its main count(s) in its summary as ``items``, e.g.
``{"documents": 5183, "tokens": 1200000}``.

Peak RSS is ``getrusage``'s ``ru_maxrss`` of this process, reset at the start where Linux allows it (so a stage run
in-process by `stages.pipeline.run_plan` does not inherit an earlier stage's peak), and of the largest child process
reaped so far (a worker pool's: an upper bound, since Linux counts in a child the RSS its parent had when it
started it). Peak GPU memory is torch's ``max_memory_allocated`` when torch is imported and CUDA is initialised
(0 when CUDA is available but unused, null without CUDA).
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping

MIB = 1024  # ru_maxrss is in KiB on Linux
CLEAR_REFS = Path("/proc/self/clear_refs")


def available_threads() -> int:
    """The cores this process is given: its CPU affinity (a Slurm or container allocation), capped by
    OMP_NUM_THREADS when set (Snakemake sets it to the rule's ``threads``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(cores, int(limit))) if limit.isdigit() and int(limit) > 0 else cores


def gpu_may_be_visible() -> bool:
    """Whether this process may see a CUDA device, decided without importing torch: not where CUDA_VISIBLE_DEVICES is
    set empty (a CPU stage's rule, or a launch with no GPU), nor where it is unset and no ``nvidia-smi`` is on the
    PATH (no NVIDIA driver). Otherwise torch must tell (``torch.cuda.is_available()``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return bool(visible.strip())
    return shutil.which("nvidia-smi") is not None


def _reset_peak_rss() -> bool:
    try:
        CLEAR_REFS.write_text("5")  # resets the high-water mark of this process's RSS
        return True
    except OSError:
        return False


def _cuda():
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def process_started() -> float | None:
    """When this process started, on the ``time.time()`` clock (Linux: /proc; None elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks since boot


_JOB_STARTED: list[float] = []
"""When the first stage of this process started (the process's start); a later stage run in the same process
(`stages.pipeline.run_plan`) starts at its `Meter`."""


class Meter:
    """Started before a stage's work; `block` after it. ``fixed_s`` of its block is the job's wall time outside the
    work: the process's start (interpreter, imports, arguments, the artifact lock) up to the work, for the first stage
    a process runs; 0 for a later one."""

    def __init__(self) -> None:
        self.job_started = None if _JOB_STARTED else process_started()
        _JOB_STARTED.append(time.time())
        self.rss_reset = _reset_peak_rss()
        cuda = _cuda()
        if cuda is not None and cuda.is_initialized():
            cuda.reset_peak_memory_stats()
        self.began = time.perf_counter()
        self.fixed = max(0.0, time.time() - self.job_started) if self.job_started is not None else 0.0

    def block(self, items: Mapping[str, int] | None = None) -> dict[str, Any]:
        wall = time.perf_counter() - self.began
        items = {name: int(count) for name, count in (items or {}).items()}
        cuda = _cuda()
        gpu = None if cuda is None else (cuda.max_memory_allocated() if cuda.is_initialized() else 0)
        return {
            "wall_s": round(wall, 3),
            "fixed_s": round(self.fixed, 3),
            "threads": available_threads(),
            "items": items,
            "items_per_s": {name: round(count / wall, 1) if wall > 0 else None for name, count in items.items()},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB, 1),
            "peak_rss_children_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / MIB, 1),
            "peak_rss_reset": self.rss_reset,
            "peak_gpu_mib": None if gpu is None else round(gpu / 2**20, 1),
        }

    def merge(self, summary: Mapping[str, Any] | None) -> dict[str, Any]:
        """``summary`` (or an empty one) with the ``resources`` block of its ``items``."""
        summary = dict(summary or {})
        return {**summary, "resources": self.block(summary.get("items"))}
