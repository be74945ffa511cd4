"""Run a GPU stage on GPUs of its own: claim free devices, then exec the stage (under torchrun for more than one).

Snakemake's `gpu` resource is only a counter: it keeps the sum of running jobs' GPUs within the machine's, but does
not say *which* GPUs a job gets. Rules therefore start GPU stages through this launcher:

    python -m stages.core.launch --gpus 2 -- stages.train_star OUT --params ... --inputs ...

It claims that many devices with one lock file per device (an flock, released by the kernel when the job ends, even
on kill -9), sets CUDA_VISIBLE_DEVICES to them and replaces itself with the stage, so signals reach the stage. With
more than one GPU the stage runs under `torchrun --standalone` (one process per GPU, DistributedDataParallel).

Devices come from HARDNEG_GPU_IDS (comma-separated; restricts or fakes the pool), else CUDA_VISIBLE_DEVICES, else
`nvidia-smi`. Inside a Slurm job Slurm has already chosen the devices: nothing is claimed.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLL_SECONDS = 2.0
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def gpu_pool() -> list[str]:
    """The device ids this machine's jobs may use."""
    for variable in ("HARDNEG_GPU_IDS", "CUDA_VISIBLE_DEVICES"):
        if os.environ.get(variable) is not None:
            return [part.strip() for part in os.environ[variable].split(",") if part.strip()]
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def lock_dir() -> Path:
    path = Path(os.environ.get("HARDNEG_GPU_LOCKS") or Path(tempfile.gettempdir()) / f"hardneg-gpus-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def try_claim(count: int, pool: list[str], locks: Path) -> dict[str, int] | None:
    """Lock `count` free devices of `pool`; returns {device id: open lock fd}, or None (nothing held) if too few."""
    held: dict[str, int] = {}
    for device in pool:
        if len(held) == count:
            break
        fd = os.open(locks / f"gpu-{device}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held[device] = fd
    if len(held) == count:
        return held
    for fd in held.values():
        os.close(fd)
    return None


def claim_gpus(count: int, pool: list[str], locks: Path, timeout: float | None = None) -> dict[str, int]:
    """Wait until `count` devices of `pool` are free and lock them (in pool order)."""
    if count > len(pool):
        raise SystemExit(
            f"error in stage launch: the job asks for {count} GPU(s) but this machine has {len(pool)} ({pool})\n"
            "  fix: lower the rule's gpu resource (--set-resources RULE:gpu=N) or set HARDNEG_GPU_IDS"
        )
    started = time.monotonic()
    while (held := try_claim(count, pool, locks)) is None:
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"no {count} free GPU(s) among {pool} after {timeout:.0f} s (locks in {locks})")
        time.sleep(POLL_SECONDS)
    return held


def stage_command(module: str, args: list[str], gpus: int) -> list[str]:
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", module, *args]
    return [sys.executable, "-m", module, *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the job gets (the rule's gpu resource)")
    parser.add_argument("module", help="the stage module, e.g. stages.train_star")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments")
    options = parser.parse_args(argv)
    gpus = options.gpus
    if gpus <= 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a job without GPUs must not touch one another job holds
    elif "SLURM_JOB_ID" not in os.environ:
        pool = gpu_pool()
        if pool:
            held = claim_gpus(gpus, pool, lock_dir())
            for fd in held.values():
                os.set_inheritable(fd, True)  # the locks live as long as the exec'd stage
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(held)
            print(f"launch: {options.module} on GPU(s) {','.join(held)}", file=sys.stderr, flush=True)
        else:
            gpus = 1  # no GPU here: one process on the CPU
    if gpus > 1:
        for variable, value in MULTICAST_OFF.items():  # NVLink multicast off (see the GPU notes in README)
            os.environ.setdefault(variable, value)
    command = stage_command(options.module, options.args, gpus)
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
