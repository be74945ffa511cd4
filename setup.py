"""The wheel's workflow: setuptools' build_py also copies the Snakefile, workflow/, config.yaml and envs/ into the
package (`hardneg/workflow_files`), so that `hardneg run` finds them installed; the repository keeps them at its root.
Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WORKFLOW_FILES = ["Snakefile", "config.yaml", "workflow", "envs"]  # stages.core.workflow_files.WORKFLOW_DATA


class BuildWithWorkflow(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads them from the checkout
            return
        target = Path(self.build_lib) / "hardneg" / "workflow_files"
        for name in WORKFLOW_FILES:
            source, destination = ROOT / name, target / name
            if not source.exists():  # a source tree without the workflow (the container image's): the library alone
                continue
            if source.is_dir():
                shutil.copytree(source, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)


setup(cmdclass={"build_py": BuildWithWorkflow})
