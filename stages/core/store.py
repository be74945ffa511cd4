"""Content-addressed artifact store.

Every stage writes to ``results/<stage>/<key>/`` where ``key`` is a short sha256 over the stage name, the stage's
code version (``VERSION`` in ``stages/<stage>.py``, or ``stages/<stage>/__init__.py`` for a package), the canonical
JSON of its parameters and the keys of its inputs (an upstream artifact's key, or a raw file's content hash). Outputs
appear atomically: a stage writes into a temporary sibling directory that is renamed into place, with a
``manifest.json``, once everything is written. Artifacts never change once written, so one may hold a file of its
input as a hard link (`link_or_copy`: a flat index, its encode shards' embeddings): stored once, hashed once (the
input's manifest has it), and each artifact keeps it when the other is removed.

CLI: ``python -m stages.core.store verify`` re-hashes artifacts (``stages.pipeline.prune`` removes what no config reaches).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .artifacts import MANIFEST
from .errors import ArtifactError
from .resources import available_threads

log = logging.getLogger("stages.core.store")

KEY_LENGTH = 16
HASH_CACHE = ".hash-cache.json"
"""``results/<this>``: raw inputs' content hashes (`HashCache`), which the DAG keeps and a stage reads for its key."""
# Files that tools put into artifact directories after they are written; never part of an artifact.
FOREIGN_FILES = {".snakemake_timestamp"}
PACKAGES = ("torch", "transformers", "faiss-cpu", "bm25s", "ir-measures", "pyarrow", "pandas", "numpy")
STAGES_DIR = Path(__file__).resolve().parent.parent  # the stage modules
DAMAGED_FIX = (
    "see `python -m stages.core.store verify`; delete the folder (or move it away) and rerun: the stage rebuilds it"
)
# Folders next to artifacts: a write in progress or killed (.tmp-<name>-<pid>[@<host>]), a replaced artifact being
# removed (.trash-<name>-<pid>[@<host>]), a damaged artifact set aside by a run (.damaged-<name>-<time>).
LEFTOVER = re.compile(r"\.(tmp|trash)-([^@]+)-(\d+)(?:@(.+))?|\.damaged-(.+)")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def artifact_key(stage: str, version: int, params: Mapping[str, Any], input_keys: Mapping[str, str]) -> str:
    payload = canonical_json({"stage": stage, "version": version, "params": params, "inputs": input_keys})
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def stage_source(stage: str) -> Path:
    """The file that holds a stage's ``VERSION``: ``stages/<stage>.py``, or ``stages/<stage>/__init__.py`` for a stage
    that is a package."""
    module = STAGES_DIR / f"{stage}.py"
    return module if module.is_file() else STAGES_DIR / stage / "__init__.py"


def stage_version(stage: str) -> int:
    """The ``VERSION = N`` of the stage's module or package (`stage_source`), read without importing it (imports can
    be slow)."""
    path = stage_source(stage)
    match = re.search(r"^VERSION\s*=\s*(\d+)", path.read_text(), re.MULTILINE)
    if not match:
        raise ArtifactError("stage module has no 'VERSION = <int>' line", path=path)
    return int(match.group(1))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """Content hashes of raw input files, cached by (path, size, mtime) so large files are hashed once; a read-only
    cache never saves."""

    def __init__(self, path: Path | None, read_only: bool = False):
        self.path = path
        self.read_only = read_only
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
        if self.path is None or self.read_only or not self.dirty:
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
    if (Path(path) / MANIFEST).is_file():
        return read_manifest(path)["key"]
    return raw_key(Path(path), cache)


def read_manifest(artifact: Path) -> dict:
    manifest = Path(artifact) / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(
            "not a complete artifact (no manifest.json)", path=artifact, fix="rerun the stage that makes it"
        )
    try:
        data = json.loads(manifest.read_text())
    except ValueError as error:  # truncated or not JSON (UnicodeDecodeError is a ValueError too)
        raise ArtifactError(f"damaged manifest: {error}", path=manifest, fix=DAMAGED_FIX) from None
    if not isinstance(data, dict) or "key" not in data or not isinstance(data.get("files"), dict):
        raise ArtifactError("damaged manifest: no 'key' or 'files'", path=manifest, fix=DAMAGED_FIX)
    return data


def file_record(value: str | Mapping[str, Any]) -> dict:
    """A manifest's entry for one file: {sha256, size, mtime_ns}; old manifests hold only the sha256 string."""
    return {"sha256": value} if isinstance(value, str) else dict(value)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def artifact_files(directory: Path) -> list[Path]:
    """The files that make up an artifact (its manifest and foreign files aside), sorted."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    return [p for p in files if p.name != MANIFEST and p.name not in FOREIGN_FILES]


def hash_files(files: list[Path]) -> list[str]:
    """Each file's sha256, several files at once (hashlib and reads release the GIL): a large artifact's files on the
    job's threads."""
    if len(files) < 2:
        return [file_sha256(path) for path in files]
    with ThreadPoolExecutor(min(len(files), available_threads())) as pool:
        return list(pool.map(file_sha256, files))


def hash_tree(directory: Path) -> dict[str, str]:
    files = artifact_files(directory)
    return {str(p.relative_to(directory)): digest for p, digest in zip(files, hash_files(files))}


def file_records(directory: Path, known: Mapping[tuple, str] | None = None) -> dict[str, dict]:
    """What the manifest records of each file: sha256, size and mtime_ns (the last two for the cheap check). A file
    in ``known`` (`shared_hashes`: one an input artifact holds too, hard-linked) is not hashed again."""
    known, records = known or {}, {}
    files = [(path, path.stat()) for path in artifact_files(directory)]
    unknown = [path for path, stat in files if _identity(stat) not in known]
    digests = dict(zip(unknown, hash_files(unknown)))
    for path, stat in files:
        digest = known.get(_identity(stat)) or digests[path]
        record = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        records[str(path.relative_to(directory))] = record
    return records


def _identity(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def shared_hashes(inputs: Mapping[str, Path]) -> dict[tuple, str]:
    """The recorded sha256 of the input artifacts' files, by (device, inode, size, mtime_ns) as they are now: what a
    hard link to one of them in a new artifact holds (`check_inputs` found them as recorded)."""
    known = {}
    for artifact in map(Path, inputs.values()):
        if not (artifact / MANIFEST).is_file():
            continue
        for name, value in read_manifest(artifact)["files"].items():
            record = file_record(value)
            with contextlib.suppress(OSError):
                stat = (artifact / name).stat()
                if (record.get("size"), record.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
                    known[_identity(stat)] = record["sha256"]
    return known


def link_or_copy(source: Path, target: Path) -> bool:
    """``target`` as a hard link to ``source``: artifacts never change once written, so two may hold one file, stored
    once. A copy, with a warning, where linking fails (another filesystem). Whether it linked."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return True
    except OSError as error:
        log.warning("cannot hard-link %s (%s): copying it, which takes its size on disk again", source, error)
        shutil.copy2(source, target)
        return False


def damage(artifact: Path, cache: HashCache | None = None) -> str | None:
    """A cheap check: every recorded file exists with its recorded size and mtime; a file whose mtime changed but
    not its size is re-hashed (a touch is not damage). The first problem found, or None."""
    try:
        files = read_manifest(artifact)["files"]
    except ArtifactError as error:
        return f"{error.path}: {error.message}"
    for name, value in files.items():
        record, path = file_record(value), Path(artifact) / name
        try:
            stat = path.stat()
        except OSError:
            return f"{path}: missing"
        if "size" not in record:
            continue  # an old manifest: only a full verify can tell
        if stat.st_size != record["size"]:
            return f"{path}: {stat.st_size} bytes, {record['size']} when written"
        if stat.st_mtime_ns != record["mtime_ns"]:
            if (cache.sha256(path) if cache else file_sha256(path)) != record["sha256"]:
                return f"{path}: changed on disk since written"
    return None


def check_inputs(inputs: Mapping[str, Path]) -> None:
    """A stage never reads a damaged artifact: refuse to start when an input artifact fails the cheap check."""
    for name, path in inputs.items():
        if (Path(path) / MANIFEST).is_file() and (problem := damage(Path(path))):
            raise ArtifactError(f"input {name!r} is a damaged artifact: {problem}", path=path, fix=DAMAGED_FIX)


def snakemake_dry_run() -> bool:
    """Whether this process is ``snakemake -n`` (Snakemake 9 keeps its workflow in ``snakemake.workflow``'s globals,
    with the output settings, dry run included, set before the Snakefile is read)."""
    workflow = getattr(sys.modules.get("snakemake.workflow"), "workflow", None)
    return bool(getattr(getattr(workflow, "output_settings", None), "dryrun", False))


def set_aside_damaged(artifacts: Iterable[Path], cache: HashCache | None = None, dry_run: bool = False) -> list[Path]:
    """Move each existing artifact that fails the cheap check to ``<stage>/.damaged-<key>-<time>`` (with a warning),
    so that the run rebuilds it; in a dry run only warn. Returns the artifacts moved."""
    dry_run = dry_run or snakemake_dry_run()
    moved = []
    for artifact in map(Path, artifacts):
        if not artifact.is_dir() or not (problem := damage(artifact, cache)):
            continue
        warning = f"warning: damaged artifact {artifact}\n  {problem}\n  "
        if dry_run:
            print(f"{warning}a run moves it aside and rebuilds it", file=sys.stderr)
            continue
        target = artifact.parent / f".damaged-{artifact.name}-{datetime.datetime.now():%Y%m%dT%H%M%S.%f}"
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            artifact.rename(target)
            moved.append(artifact)
            print(f"{warning}moved aside to {target}; this run rebuilds it", file=sys.stderr)
    return moved


def expected_key(
    stage: str, params: Mapping[str, Any], inputs: Mapping[str, Path], cache: HashCache | None = None
) -> tuple[int, dict, str]:
    """(stage version, input keys, key) of the artifact that ``stage`` makes from ``params`` and ``inputs``; raw
    inputs hashed through ``cache``."""
    version = stage_version(stage)
    input_keys = {name: input_key(Path(path), cache) for name, path in inputs.items()}
    return version, input_keys, artifact_key(stage, version, params, input_keys)


def results_cache(out_dir: Path) -> HashCache:
    """The hash cache of the results folder that holds ``out_dir`` (``results/<stage>/<key>``), read only: a raw input
    the DAG hashed (a dataset, a model folder) is not hashed again while its size and mtime are unchanged."""
    return HashCache(Path(out_dir).parent.parent / HASH_CACHE, read_only=True)  # jobs run at once: none writes it


def made_already(out_dir: Path, stage: str, params: Mapping[str, Any], inputs: Mapping[str, Path]) -> bool:
    """Whether ``out_dir`` holds this very artifact, intact (another process made it while this one waited)."""
    if not (Path(out_dir) / MANIFEST).is_file():
        return False
    try:
        key = read_manifest(out_dir)["key"]
        return key == expected_key(stage, params, inputs, results_cache(out_dir))[2] and damage(Path(out_dir)) is None
    except ArtifactError:
        return False


@contextlib.contextmanager
def artifact_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``<stage>/.lock-<key>`` (flock) while making an artifact: another process making it waits here.

    The lock file is removed on release (and the stage's folder, if that leaves it empty); a waiter that then finds
    its file unlinked or replaced locks anew."""
    out_dir = Path(out_dir)
    lock = out_dir.parent / f".lock-{out_dir.name}"
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(lock, "a")
        except FileNotFoundError:  # the folder was just removed as empty
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {lock}: another process is making {out_dir}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()
        with contextlib.suppress(OSError):
            lock.parent.rmdir()  # nothing was made there


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
    check_inputs(inputs)
    version, input_keys, key = expected_key(stage, params, inputs, results_cache(out_dir))
    if check_key and out_dir.name != key:
        raise ArtifactError(
            f"artifact directory is named {out_dir.name!r} but its stage, params and inputs give key {key!r}",
            path=out_dir,
            fix="let the workflow choose the output directory, or pass check_key=False",
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}@{platform.node()}"
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
            "files": file_records(tmp, shared_hashes(inputs)),
            "packages": package_versions(),
            "host": platform.node(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_time_s": round(time.time() - started, 3),
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            trash = out_dir.parent / f".trash-{out_dir.name}-{os.getpid()}@{platform.node()}"
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            out_dir.parent.rmdir()  # the stage's folder, when this failed artifact was to be its first
        raise


def stage_dirs(results: Path) -> Iterator[Path]:
    for stage_dir in sorted(Path(results).iterdir()) if Path(results).is_dir() else []:
        if stage_dir.is_dir() and stage_dir.name not in {"runs", "logs", "benchmarks", "work", "reports"}:
            yield stage_dir


def iter_artifacts(results: Path) -> Iterator[Path]:
    """Artifact directories under ``results`` (``<stage>/<key>/``), complete or not; dot-names (locks, leftovers)
    are not artifacts."""
    for stage_dir in stage_dirs(results):
        for artifact in sorted(stage_dir.iterdir()):
            if artifact.is_dir() and not artifact.name.startswith("."):
                yield artifact


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def leftovers(results: Path) -> list[tuple[Path, str, bool]]:
    """(folder, what it is, removable) of each ``.tmp-``, ``.trash-`` and ``.damaged-`` folder under ``results``.

    A write's folder is removable only once its process is gone from this host (another host's cannot be told)."""
    found = []
    for stage_dir in stage_dirs(results):
        for folder in sorted(stage_dir.iterdir()):
            match = LEFTOVER.fullmatch(folder.name)
            if not folder.is_dir() or not match:
                continue
            kind, _, pid, host, damaged = match.groups()
            what = "an unfinished write" if kind == "tmp" else "a replaced artifact being removed"
            if damaged is not None:
                found.append((folder, "a damaged artifact a run set aside", True))
            elif host not in (None, platform.node()):
                found.append((folder, f"{what} of process {pid} on host {host} (cannot check it from here)", False))
            elif pid_alive(int(pid)):
                found.append((folder, f"{what} of process {pid}, which still runs", False))
            else:
                found.append((folder, f"{what} of process {pid}, which is gone", True))
    return found


def verify_artifact(artifact: Path) -> list[str]:
    """Problems found when re-hashing one artifact against its manifest (empty when intact)."""
    try:
        manifest = read_manifest(artifact)
    except ArtifactError as error:
        return [error.render()]
    problems = []
    recorded = {name: file_record(value)["sha256"] for name, value in manifest["files"].items()}
    actual = {str(p.relative_to(artifact)) for p in artifact.rglob("*") if p.is_file()}
    actual -= {MANIFEST} | {f for f in actual if Path(f).name in FOREIGN_FILES}
    for name in sorted(set(recorded) - actual):
        problems.append(f"{artifact / name}: missing (written {manifest.get('created', '?')})")
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
    parser = argparse.ArgumentParser(prog="python -m stages.core.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="re-hash every artifact and report files changed since written")
    args = parser.parse_args(argv)
    return verify_command(args.results)


def verify_command(results: Path) -> int:
    problems, left = verify(results), leftovers(results)
    for problem in problems:
        print(problem)
    for folder, what, _ in left:
        print(f"{folder}: leftover, {what}")
    count = sum(1 for _ in iter_artifacts(results))
    print(
        f"{count} artifacts checked, {len(problems)} problems, {len(left)} leftover folders "
        "(python -m stages.pipeline.prune --yes removes them)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
