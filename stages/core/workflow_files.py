"""Where the Snakemake workflow (Snakefile, workflow/, config.yaml, envs/) lies: beside the package in a checkout,
inside it as package data (`WORKFLOW_DATA`, copied by setup.py) in an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
WORKFLOW_DATA = "workflow_files"


def workflow_root() -> Path:
    """The folder holding the Snakefile and workflow/."""
    packaged = PACKAGE_DIR / WORKFLOW_DATA
    return packaged if (packaged / "Snakefile").is_file() else PACKAGE_DIR.parent


def share_with_jobs(package_parent: Path) -> None:
    """A checkout's jobs (`python -m stages.<stage>`, in the working directory) find its package: on PYTHONPATH."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_parent), os.environ.get("PYTHONPATH")]))
