"""What the Snakefile takes from the package, in one import: the package is `stages` in a checkout and `hardneg`
installed from the wheel, so the workflow imports this module under either name (`workflow/rules/common.smk`)."""

from __future__ import annotations

from pathlib import Path

from ..core.declarations import STAGES
from ..core.errors import PipelineError
from ..core.store import write_pointers
from ..core.workflow_files import share_with_jobs
from .config import validate_config
from .dag import Plan

__all__ = ["STAGES", "PipelineError", "Plan", "console_summary", "share_with_jobs", "validate_config", "write_pointers"]


def console_summary(report: Path) -> str:
    """The report's table as the console shows it after a run (pandas is imported only then)."""
    from ..report.table import console_summary as summary

    return summary(report)
