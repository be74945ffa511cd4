"""The artifact store: keys, atomic writes, manifests, verify, gc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages import store
from stages.errors import ArtifactError


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
    assert manifest["files"] == {"run.txt": store.file_sha256(out / "run.txt")}
    assert "wall_time_s" in manifest and "python" in manifest["packages"]
    assert store.input_key(out) == key


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "results" / "bm25" / "somekey"
    with pytest.raises(RuntimeError):
        with store.write_artifact(out, "bm25", {}, {}, check_key=False) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert list((tmp_path / "results" / "bm25").iterdir()) == []


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


def test_pointers_are_relative_symlinks(tmp_path):
    results = tmp_path / "results"
    artifact = results / "bm25" / "abc"
    artifact.mkdir(parents=True)
    store.write_pointers(results, {"exp": {"bm25-test": artifact}})
    link = results / "runs" / "exp" / "bm25-test"
    assert link.is_symlink() and link.resolve() == artifact.resolve()
    store.write_pointers(results, {"exp": {"bm25-test": artifact}})  # idempotent
    assert json.loads((results / "runs" / "exp" / "index.json").read_text()) == {"bm25-test": str(artifact)}
