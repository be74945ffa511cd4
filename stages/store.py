"""Content-addressed artifact store.

Every stage writes to ``results/<stage>/<key>/`` where ``key`` is a short sha256 over the stage name, the stage's
code version (``VERSION`` in ``stages/<stage>.py``), the canonical JSON of its parameters and the keys of its inputs
(an upstream artifact's key, or a raw file's content hash). Outputs appear atomically: a stage writes into a
temporary sibling directory that is renamed into place, with a ``manifest.json``, once everything is written.

CLI: ``python -m stages.store verify`` re-hashes artifacts; ``python -m stages.store gc`` lists (and with ``--yes``
removes) artifacts that the current config no longer reaches.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

from stages.errors import ArtifactError

KEY_LENGTH = 16
MANIFEST = "manifest.json"
# Files that tools put into artifact directories after they are written; never part of an artifact.
FOREIGN_FILES = {".snakemake_timestamp"}
PACKAGES = ("torch", "transformers", "faiss-cpu", "bm25s", "ir-measures", "pyarrow", "pandas", "numpy")
STAGES_DIR = Path(__file__).resolve().parent


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def artifact_key(stage: str, version: int, params: Mapping[str, Any], input_keys: Mapping[str, str]) -> str:
    payload = canonical_json({"stage": stage, "version": version, "params": params, "inputs": input_keys})
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def stage_version(stage: str) -> int:
    """The ``VERSION = N`` of ``stages/<stage>.py``, read without importing the module (imports can be slow)."""
    source = (STAGES_DIR / f"{stage}.py").read_text()
    match = re.search(r"^VERSION\s*=\s*(\d+)", source, re.MULTILINE)
    if not match:
        raise ArtifactError(f"stage module has no 'VERSION = <int>' line", path=STAGES_DIR / f"{stage}.py")
    return int(match.group(1))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """Content hashes of raw input files, cached by (path, size, mtime) so large files are hashed once."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        if path is not None and path.exists():
            with contextlib.suppress(ValueError, OSError):
                self.entries = json.loads(path.read_text())
        self.dirty = False

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        name = str(file.resolve())
        cached = self.entries.get(name)
        if cached and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return cached[2]
        digest = file_sha256(file)
        self.entries[name] = [stat.st_size, stat.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.entries))
        tmp.replace(self.path)
        self.dirty = False


def raw_key(path: Path, cache: HashCache | None = None) -> str:
    """Content key of a raw input: a file's sha256, or for a directory the hash of its files' names and hashes."""
    hasher = cache.sha256 if cache is not None else file_sha256
    path = Path(path)
    if path.is_file():
        return hasher(path)[:KEY_LENGTH]
    listing = sorted(p for p in path.rglob("*") if p.is_file())
    entries = [[str(p.relative_to(path)), hasher(p)] for p in listing]
    return hashlib.sha256(canonical_json(entries).encode()).hexdigest()[:KEY_LENGTH]


def input_key(path: Path, cache: HashCache | None = None) -> str:
    """An artifact's key (from its manifest) or a raw input's content key."""
    manifest = Path(path) / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["key"]
    return raw_key(Path(path), cache)


def read_manifest(artifact: Path) -> dict:
    manifest = Path(artifact) / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(
            "not a complete artifact (no manifest.json)", path=artifact, fix="rerun the stage that makes it"
        )
    return json.loads(manifest.read_text())


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def hash_tree(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST and p.name not in FOREIGN_FILES
    }


@contextlib.contextmanager
def write_artifact(
    out_dir: Path,
    stage: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Path],
    *,
    check_key: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield a temporary directory to write the artifact into; on success it becomes ``out_dir`` with a manifest.

    With ``check_key`` the directory name must be the key computed from stage, version, params and inputs: a
    mismatch means the workflow and the stage disagree about what the artifact is.
    """
    out_dir = Path(out_dir)
    version = stage_version(stage)
    input_keys = {name: input_key(Path(path)) for name, path in inputs.items()}
    key = artifact_key(stage, version, params, input_keys)
    if check_key and out_dir.name != key:
        raise ArtifactError(
            f"artifact directory is named {out_dir.name!r} but its stage, params and inputs give key {key!r}",
            path=out_dir,
            fix="let the workflow choose the output directory, or pass check_key=False",
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.time()
    try:
        yield tmp
        manifest = {
            "stage": stage,
            "version": version,
            "key": key,
            "params": params,
            "inputs": {name: {"key": input_keys[name], "path": str(path)} for name, path in inputs.items()},
            "files": hash_tree(tmp),
            "packages": package_versions(),
            "host": platform.node(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_time_s": round(time.time() - started, 3),
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            trash = out_dir.parent / f".trash-{out_dir.name}-{os.getpid()}"
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def iter_artifacts(results: Path) -> Iterator[Path]:
    """Artifact directories under ``results`` (``<stage>/<key>/``), complete or not."""
    for stage_dir in sorted(Path(results).iterdir()) if Path(results).is_dir() else []:
        if not stage_dir.is_dir() or stage_dir.name in {"runs", "logs", "benchmarks", "work", "reports"}:
            continue
        for artifact in sorted(stage_dir.iterdir()):
            if artifact.is_dir() and not artifact.name.startswith("."):
                yield artifact


def verify_artifact(artifact: Path) -> list[str]:
    """Problems found when re-hashing one artifact against its manifest (empty when intact)."""
    try:
        manifest = read_manifest(artifact)
    except ArtifactError as error:
        return [error.render()]
    problems = []
    recorded = manifest["files"]
    actual = {str(p.relative_to(artifact)) for p in artifact.rglob("*") if p.is_file()}
    actual -= {MANIFEST} | {f for f in actual if Path(f).name in FOREIGN_FILES}
    for name in sorted(set(recorded) - actual):
        problems.append(f"{artifact / name}: missing (written {manifest['created']})")
    for name in sorted(actual - set(recorded)):
        problems.append(f"{artifact / name}: not part of the artifact (added after it was written)")
    for name in sorted(set(recorded) & actual):
        if file_sha256(artifact / name) != recorded[name]:
            problems.append(f"{artifact / name}: changed on disk since written")
    return problems


def verify(results: Path) -> list[str]:
    problems: list[str] = []
    for artifact in iter_artifacts(results):
        problems += verify_artifact(artifact)
    return problems


def unreachable(results: Path, reachable: set[Path]) -> list[Path]:
    reachable = {Path(p).resolve() for p in reachable}
    return [a for a in iter_artifacts(results) if a.resolve() not in reachable]


def write_pointers(results: Path, experiments: Mapping[str, Mapping[str, Path]]) -> None:
    """``results/runs/<experiment>/<role>`` symlinks to the artifacts of the latest run, plus an index.json.

    These are not Snakemake outputs, so a dry run after a complete run stays clean.
    """
    runs = Path(results) / "runs"
    for experiment, roles in experiments.items():
        folder = runs / experiment
        folder.mkdir(parents=True, exist_ok=True)
        for role, artifact in roles.items():
            link = folder / role
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.path.relpath(Path(artifact).resolve(), folder.resolve()))
        index = {role: str(artifact) for role, artifact in roles.items()}
        (folder / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="re-hash every artifact and report files changed since written")
    gc = commands.add_parser("gc", help="list (and with --yes remove) artifacts the config no longer reaches")
    gc.add_argument("--configfile", type=Path, default=Path("config.yaml"))
    gc.add_argument("--yes", action="store_true", help="remove the listed artifacts")
    args = parser.parse_args(argv)

    if args.command == "verify":
        problems = verify(args.results)
        count = sum(1 for _ in iter_artifacts(args.results))
        for problem in problems:
            print(problem)
        print(f"{count} artifacts checked, {len(problems)} problems")
        return 1 if problems else 0

    from stages.plan import Plan, load_config

    plan = Plan(load_config(args.configfile))
    stale = unreachable(args.results, {node.path(args.results) for node in plan.nodes()})
    for artifact in stale:
        print(artifact)
    if not stale:
        print("nothing to remove: every artifact is reached by the config")
    elif args.yes:
        for artifact in stale:
            shutil.rmtree(artifact)
        print(f"removed {len(stale)} artifacts")
    else:
        print(f"{len(stale)} artifacts not reached by {args.configfile}; rerun with --yes to remove them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
