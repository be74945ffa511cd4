"""The artifact store: keys, atomic writes, manifests, verify, gc."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.core import store
from stages.core.errors import ArtifactError


def test_key_depends_on_every_part():
    base = store.artifact_key("bm25", 1, {"k1": 1.5, "b": 0.75}, {"prepared": "abc"})
    assert base == store.artifact_key("bm25", 1, {"b": 0.75, "k1": 1.5}, {"prepared": "abc"})  # canonical JSON
    assert len(base) == store.KEY_LENGTH
    assert base != store.artifact_key("score", 1, {"k1": 1.5, "b": 0.75}, {"prepared": "abc"})
    assert base != store.artifact_key("bm25", 2, {"k1": 1.5, "b": 0.75}, {"prepared": "abc"})
    assert base != store.artifact_key("bm25", 1, {"k1": 1.2, "b": 0.75}, {"prepared": "abc"})
    assert base != store.artifact_key("bm25", 1, {"k1": 1.5, "b": 0.75}, {"prepared": "abd"})


def test_stage_version_is_read_from_the_module():
    assert store.stage_version("bm25") >= 1


def test_raw_key_is_content_hash_and_cached(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("hello")
    cache = store.HashCache(tmp_path / "cache.json")
    first = store.raw_key(data, cache)
    cache.save()
    assert store.raw_key(data, store.HashCache(tmp_path / "cache.json")) == first
    data.write_text("hello!")
    assert store.raw_key(data, cache) != first


def test_write_artifact_is_atomic_and_has_a_manifest(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("x")
    key = store.artifact_key("bm25", store.stage_version("bm25"), {"a": 1}, {"src": store.raw_key(source)})
    out = tmp_path / "results" / "bm25" / key
    with store.write_artifact(out, "bm25", {"a": 1}, {"src": source}) as tmp:
        (tmp / "run.txt").write_text("ranked")
        assert not out.exists()  # nothing visible until complete
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["key"] == key and manifest["params"] == {"a": 1}
    stat = (out / "run.txt").stat()
    record = {"sha256": store.file_sha256(out / "run.txt"), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    assert manifest["files"] == {"run.txt": record}
    assert "wall_time_s" in manifest and "python" in manifest["packages"]
    assert store.input_key(out) == key


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "results" / "bm25" / "somekey"
    with pytest.raises(RuntimeError):
        with store.write_artifact(out, "bm25", {}, {}, check_key=False) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert not (tmp_path / "results" / "bm25").exists()  # nor the stage's folder it created


def test_key_mismatch_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="give key"):
        with store.write_artifact(tmp_path / "bm25" / "0000000000000000", "bm25", {}, {}):
            pass


def test_verify_reports_changed_missing_and_added_files(tmp_path):
    results = tmp_path / "results"
    out = results / "bm25" / "k1"
    with store.write_artifact(out, "bm25", {}, {}, check_key=False) as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "b.txt").write_text("b")
        (tmp / "c.txt").write_text("c")
    assert store.verify(results) == []
    (out / ".snakemake_timestamp").write_text("")  # written by Snakemake; not part of the artifact
    assert store.verify(results) == []
    (out / "a.txt").write_text("tampered")
    (out / "b.txt").unlink()
    (out / "d.txt").write_text("new")
    problems = "\n".join(store.verify(results))
    assert "a.txt: changed on disk" in problems
    assert "b.txt: missing" in problems
    assert "d.txt: not part of the artifact" in problems
    assert store.main(["--results", str(results), "verify"]) == 1


def test_a_file_linked_from_an_input_is_stored_and_hashed_once(tmp_path, monkeypatch):
    results = tmp_path / "results"
    source, out = results / "encode" / "k1", results / "index" / "k2"
    with store.write_artifact(source, "encode", {}, {}, check_key=False) as tmp:
        (tmp / "big.bin").write_bytes(os.urandom(4096))
    hashed, sha256 = [], store.file_sha256
    monkeypatch.setattr(store, "file_sha256", lambda path: hashed.append(Path(path).name) or sha256(path))
    with store.write_artifact(out, "index", {}, {"shard_0": source}, check_key=False) as tmp:
        assert store.link_or_copy(source / "big.bin", tmp / "vectors" / "big.bin")
        (tmp / "own.txt").write_text("own")
    assert hashed == ["own.txt"]  # the link's hash is the input's, as its manifest records it
    files, source_files = store.read_manifest(out)["files"], store.read_manifest(source)["files"]
    assert files["vectors/big.bin"] == source_files["big.bin"]
    assert (out / "vectors" / "big.bin").samefile(source / "big.bin")
    monkeypatch.setattr(store, "file_sha256", sha256)
    assert store.verify(results) == [] and store.damage(out) is None
    os.utime(source / "big.bin")  # a touch of one name is a touch of both: re-hashed, not damage
    assert store.damage(out) is None and store.damage(source) is None


def test_pointers_are_relative_symlinks(tmp_path):
    results = tmp_path / "results"
    artifact = results / "bm25" / "abc"
    artifact.mkdir(parents=True)
    store.write_pointers(results, {"exp": {"bm25-test": artifact}})
    link = results / "runs" / "exp" / "bm25-test"
    assert link.is_symlink() and link.resolve() == artifact.resolve()
    store.write_pointers(results, {"exp": {"bm25-test": artifact}})  # idempotent
    assert json.loads((results / "runs" / "exp" / "index.json").read_text()) == {"bm25-test": str(artifact)}


def make_artifact(out: Path, files: dict[str, str], inputs: dict | None = None) -> Path:
    with store.write_artifact(out, "bm25", {}, inputs or {}, check_key=False) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return out


def test_a_damaged_manifest_is_reported_by_verify_which_goes_on(tmp_path, capsys):
    results = tmp_path / "results"
    broken = make_artifact(results / "bm25" / "k1", {"a.txt": "a"})
    other = make_artifact(results / "bm25" / "k2", {"b.txt": "b"})
    text = (broken / "manifest.json").read_text()
    (broken / "manifest.json").write_text(text[: len(text) // 2])  # truncated
    (other / "b.txt").write_text("B")
    problems = "\n".join(store.verify(results))
    assert f"{broken / 'manifest.json'}: damaged manifest" in problems and "stages.core.store verify" in problems
    assert f"{other / 'b.txt'}: changed on disk" in problems  # the next artifact is still checked
    assert store.main(["--results", str(results), "verify"]) == 1
    assert "2 artifacts checked, 2 problems" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["{", "[1, 2]", '{"key": "k1"}', "\xff\xfe"])
def test_a_damaged_manifest_is_an_artifact_error_naming_it_and_the_fix(tmp_path, content):
    artifact = make_artifact(tmp_path / "bm25" / "k1", {"a.txt": "a"})
    (artifact / "manifest.json").write_bytes(content.encode("latin-1"))
    for call in (store.input_key, store.read_manifest):
        with pytest.raises(ArtifactError, match="damaged manifest") as caught:
            call(artifact)
        assert caught.value.path == str(artifact / "manifest.json")
        assert "stages.core.store verify" in caught.value.fix and "rerun" in caught.value.fix
    assert "damaged manifest" in store.damage(artifact)


def test_cheap_check_sees_size_and_content_changes_but_not_a_touch(tmp_path):
    artifact = make_artifact(tmp_path / "bm25" / "k1", {"a.txt": "abc", "b.txt": "b"})
    assert store.damage(artifact) is None
    stat = (artifact / "a.txt").stat()
    os.utime(artifact / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched
    assert store.damage(artifact) is None
    (artifact / "a.txt").write_text("xyz")  # same size, new mtime: re-hashed
    assert store.damage(artifact) == f"{artifact / 'a.txt'}: changed on disk since written"
    (artifact / "a.txt").write_text("abcd")
    assert store.damage(artifact) == f"{artifact / 'a.txt'}: 4 bytes, 3 when written"
    (artifact / "a.txt").write_text("abc")
    (artifact / "b.txt").unlink()
    assert store.damage(artifact) == f"{artifact / 'b.txt'}: missing"


def test_old_manifests_with_only_the_sha256_are_still_read(tmp_path):
    artifact = make_artifact(tmp_path / "results" / "bm25" / "k1", {"a.txt": "abc"})
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"] = {"a.txt": store.file_sha256(artifact / "a.txt")}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    assert store.damage(artifact) is None and store.verify(tmp_path / "results") == []
    (artifact / "a.txt").write_text("xyz")
    assert store.damage(artifact) is None  # no size or mtime recorded: only a full verify can tell
    assert store.verify(tmp_path / "results") == [f"{artifact / 'a.txt'}: changed on disk since written"]
    (artifact / "a.txt").unlink()
    assert store.damage(artifact) == f"{artifact / 'a.txt'}: missing"


def test_a_stage_does_not_start_on_a_damaged_input(tmp_path, capsys):
    upstream = make_artifact(tmp_path / "results" / "bm25" / "up", {"run.txt": "ranked"})
    (upstream / "run.txt").write_text("RANKED")
    with pytest.raises(ArtifactError, match="input 'run' is a damaged artifact") as caught:
        with store.write_artifact(tmp_path / "score" / "down", "score", {}, {"run": upstream}, check_key=False):
            pass
    assert f"{upstream / 'run.txt'}: changed on disk" in str(caught.value) and "stages.core.store verify" in caught.value.fix
    assert not (tmp_path / "score" / "down").exists()

    from stages.core.cli import run_stage

    calls = []
    argv = [str(tmp_path / "results" / "bm25" / "down"), "--params", "{}", "--no-check-key"]
    argv += ["--inputs", json.dumps({"run": str(upstream)})]
    assert run_stage("bm25", Empty, lambda params, inputs, out: calls.append(1), argv) == 2
    assert calls == []
    assert "input 'run' is a damaged artifact" in capsys.readouterr().err


@dataclasses.dataclass
class Empty:
    pass


def test_set_aside_moves_damaged_artifacts_but_not_in_a_dry_run(tmp_path, capsys, monkeypatch):
    stage = tmp_path / "results" / "bm25"
    intact = make_artifact(stage / "k1", {"a.txt": "a"})
    damaged = make_artifact(stage / "k2", {"a.txt": "a"})
    (damaged / "a.txt").unlink()
    assert store.set_aside_damaged([intact, damaged, stage / "absent"], dry_run=True) == []
    assert damaged.is_dir() and "a run moves it aside" in capsys.readouterr().err

    class Settings:
        dryrun = True

    module = type(sys)("snakemake.workflow")  # as Snakemake 9 has it while it reads the Snakefile
    module.workflow = type("Workflow", (), {"output_settings": Settings()})()
    monkeypatch.setitem(sys.modules, "snakemake.workflow", module)
    assert store.snakemake_dry_run() and store.set_aside_damaged([damaged]) == []  # snakemake -n
    Settings.dryrun = False
    assert store.set_aside_damaged([intact, damaged]) == [damaged]
    [aside] = [p for p in stage.iterdir() if p.name.startswith(".")]
    assert not damaged.exists() and intact.is_dir() and aside.name.startswith(".damaged-k2-")
    assert f"moved aside to {aside}" in capsys.readouterr().err
    assert [a.name for a in store.iter_artifacts(tmp_path / "results")] == ["k1"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftover_folders_are_reported_and_only_dead_writers_removable(tmp_path, capsys):
    results = tmp_path / "results"
    stage = results / "bm25"
    make_artifact(stage / "k1", {"a.txt": "a"})
    gone, alive = dead_pid(), os.getpid()
    names = [f".tmp-k2-{gone}", f".tmp-k3-{alive}", f".tmp-k4-{gone}@other-host", f".trash-k1-{gone}@{platform.node()}",
             ".damaged-k5-20240101T000000.000000"]  # fmt: skip
    for name in names:
        (stage / name).mkdir()
    (stage / ".lock-k6").write_text("")
    found = {folder.name: removable for folder, _, removable in store.leftovers(results)}
    assert found == dict(zip(names, [True, False, False, True, True]))
    assert [a.name for a in store.iter_artifacts(results)] == ["k1"]  # neither leftovers nor locks are artifacts
    assert store.main(["--results", str(results), "verify"]) == 0  # leftovers are not damage
    out = capsys.readouterr().out
    assert f"{stage / names[0]}: leftover, an unfinished write of process {gone}, which is gone" in out
    assert f"process {alive}, which still runs" in out and "on host other-host" in out
    assert "1 artifacts checked, 0 problems, 5 leftover folders" in out


def test_the_lock_file_is_gone_after_use_and_a_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "bm25" / "k1"
    with pytest.raises(RuntimeError):
        with store.artifact_lock(out):
            assert (tmp_path / "bm25" / ".lock-k1").is_file()
            raise RuntimeError
    assert not (tmp_path / "bm25").exists()  # the stage's folder too, as nothing was made in it


STAGE_SCRIPT = """
import dataclasses, sys, time
from stages.core.cli import run_stage

@dataclasses.dataclass
class Params:
    n: int

def work(params, inputs, out):
    with open(sys.argv[2], "a") as log:
        log.write("ran\\n")
    time.sleep(0.5)
    (out / "x.txt").write_text("x")

sys.exit(run_stage("bm25", Params, work, [sys.argv[1], "--params", '{"n": 1}']))
"""


def test_two_processes_making_one_artifact_run_the_work_once(tmp_path):
    key = store.artifact_key("bm25", store.stage_version("bm25"), {"n": 1}, {})
    out, ran = tmp_path / "results" / "bm25" / key, tmp_path / "ran.txt"
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    logs = [tmp_path / f"stderr-{i}.txt" for i in range(2)]
    with store.artifact_lock(out):  # held here until both processes wait for it: they do run at the same time
        processes = [subprocess.Popen([sys.executable, str(script), str(out), str(ran)], stderr=open(log, "w"))
                     for log in logs]  # fmt: skip
        deadline = time.time() + 120
        while not all("waiting for" in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in processes), [l.read_text() for l in logs]
            time.sleep(0.1)
    assert [p.wait(timeout=120) for p in processes] == [0, 0], [log.read_text() for log in logs]
    assert ran.read_text() == "ran\n"  # the work ran once
    errors = sorted(log.read_text() for log in logs)
    assert sum("reusing it" in e for e in errors) == 1 and sum(f"wrote {out}" in e for e in errors) == 1
    assert store.verify_artifact(out) == [] and sorted(p.name for p in out.parent.iterdir()) == [key]


def test_a_stage_takes_raw_inputs_hashes_from_the_results_cache(tmp_path, monkeypatch):
    """The DAG hashed the dataset when it planned: the stage's process reads results/.hash-cache.json instead of
    hashing it again (at 8.8M passages, ~3 GB), and never writes that file."""
    data = tmp_path / "collection.tsv"
    data.write_text("1\tsome passage\n")
    results = tmp_path / "results"
    planned = store.HashCache(results / store.HASH_CACHE)
    key = store.expected_key("prepare", {"a": 1}, {"corpus": data}, planned)[2]
    planned.save()
    written = (results / store.HASH_CACHE).read_text()

    hashed, file_sha256 = [], store.file_sha256
    monkeypatch.setattr(store, "file_sha256", lambda path: hashed.append(Path(path)) or file_sha256(path))
    with store.write_artifact(results / "prepare" / key, "prepare", {"a": 1}, {"corpus": data}) as tmp:
        (tmp / "corpus.parquet").write_text("x")
    assert data not in hashed and [path.name for path in hashed] == ["corpus.parquet"]  # the output only
    assert (results / store.HASH_CACHE).read_text() == written
    data.write_text("1\tanother passage\n")  # a changed file is hashed anew
    changed = store.expected_key("prepare", {"a": 1}, {"corpus": data}, store.results_cache(results / "prepare" / key))
    assert changed[2] != key and data in hashed
