"""What a CPU job loads before its work (its ``fixed_s``): no torch, transformers or faiss (seconds to import)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stages.core.declarations import STAGES

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ["faiss", "torch", "transformers"]


@pytest.mark.parametrize("stage", [s.name for s in STAGES.values() if not s.gpu])
def test_a_cpu_stage_starts_without_torch(stage):
    module = f"stages.{stage}.stage" if (ROOT / "stages" / stage).is_dir() else f"stages.{stage}"
    code = f"import sys, {module}; print(sorted(set(sys.modules) & set({HEAVY!r})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()} before its work"
