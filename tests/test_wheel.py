"""The built wheel, installed into a fresh venv, runs the default DAG from an empty folder with only a config file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

from conftest import ROOT, write_scifact_slice

SOURCES = ["pyproject.toml", "setup.py", "README.md", "Snakefile", "config.yaml", "stages", "workflow", "envs"]


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources (no build/ left in the checkout); pip and setuptools as installed."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path / "dist"),
        ".",
    ]
    subprocess.run(command, cwd=source, check=True, capture_output=True)
    return next((tmp_path / "dist").glob("hardneg-*.whl"))


def fresh_venv(folder: Path) -> Path:
    """A venv that reuses this interpreter's installed packages (the dependencies) but has no `hardneg` of its own."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python*/site-packages"))
    # plain paths: this interpreter's site-packages without its .pth hooks (an editable install's finder)
    paths = dict.fromkeys(sysconfig.get_paths()[name] for name in ("purelib", "platlib"))
    (site / "outer.pth").write_text("".join(f"{path}\n" for path in paths))
    return folder / "bin"


def test_installed_wheel_runs_the_default_dag_in_an_empty_folder(tmp_path):
    wheel, bin_dir = build_wheel(tmp_path), fresh_venv(tmp_path / "venv")
    # --force-reinstall: pip would otherwise take the checkout's editable install of the same version, seen through
    # outer.pth, as already satisfying the wheel
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--force-reinstall", "--quiet", str(wheel)], check=True)
    workdir = tmp_path / "empty"
    write_scifact_slice(workdir / "data", train_queries=5, test_queries=10, extra_docs=40)
    config = {"dataset": {"path": "data"}, "evaluate": {"splits": ["test"]}, "score": {"bootstrap_samples": 100},
              "experiments": [{"name": "bm25", "method": "bm25"}]}  # fmt: skip
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PATH": f"/usr/bin{os.pathsep}/bin"}

    def hardneg(*args: str) -> str:
        done = subprocess.run([bin_dir / "hardneg", *args], cwd=workdir, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    where = subprocess.run([bin_dir / "python", "-c", "import hardneg; print(hardneg.__file__)"], env=env,
                           capture_output=True, text=True, check=True, cwd=workdir)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv")
    hardneg("run", "--cores", "2")
    assert (workdir / "results" / "runs" / "bm25" / "score-test" / "metrics.json").is_file()
    assert (workdir / "results" / "runs" / "report").is_dir()
    assert hardneg("status").strip().endswith("0 missing")
    hardneg("export", "shared")
    lines = (workdir / "shared" / "runs" / "bm25.test.trec").read_text().splitlines()
    assert lines and all(line.split()[-1] == "bm25" for line in lines)  # the experiment's tag, not the stage's


def test_pyproject_lists_every_subpackage_under_hardneg():
    """setuptools' explicit packages (package-dir maps hardneg to stages/): a new subpackage must be listed."""
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    folders = [init.parent.relative_to(ROOT / "stages") for init in (ROOT / "stages").rglob("__init__.py")]
    assert sorted(listed) == sorted(".".join(("hardneg", *folder.parts)) for folder in folders)
