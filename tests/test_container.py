"""Opt-in (HARDNEG_CONTAINER_TEST=1, root, podman + debootstrap + runc): build the stage image and run a stage in it.

The image comes from envs/container/build.sh (a debootstrap root filesystem, then the Containerfile). The `encode`
stage (torch, transformers, the bundled MiniLM) runs inside it on a slice of SciFact and must give the embeddings
the same stage gives on the host. Not part of every CI run: the build downloads ~1 GB and takes minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.core.tables import read_embeddings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.environ.get("HARDNEG_CONTAINER_TEST") != "1",
    reason="opt-in: set HARDNEG_CONTAINER_TEST=1 to build the image with podman and run a stage in it",
)
IMAGE = os.environ.get("HARDNEG_IMAGE", "localhost/hardneg:0.1.0")
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "envs" / "container" / "containers.conf")}


@pytest.fixture(scope="module")
def image() -> str:
    if subprocess.run(["podman", "image", "exists", IMAGE], env=PODMAN_ENV).returncode != 0:
        subprocess.run([str(ROOT / "envs" / "container" / "build.sh"), IMAGE], env=PODMAN_ENV, check=True, timeout=1800)
    return IMAGE


def encode_command(python: str, out, prepared) -> list[str]:
    params = {"model": "bundled", "what": "corpus", "split": "test", "shard": 0, "num_shards": 1, "max_length": 64,
              "batch_size": 32, "dtype": "float32", "pooling": "auto", "normalize": "auto", "autocast": "none"}
    return [python, "-m", "stages.encode", str(out), "--no-check-key", "--params", json.dumps(params),
            "--inputs", json.dumps({"prepared": str(prepared)})]


def test_encode_in_the_image_matches_the_host(image, prepared, tmp_path):
    host_out, image_out = tmp_path / "host", tmp_path / "image"
    subprocess.run(encode_command(sys.executable, host_out, prepared), check=True, cwd=ROOT, timeout=600)
    mounts = ["-v", f"{prepared}:{prepared}:ro", "-v", f"{tmp_path}:{tmp_path}"]
    result = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", *mounts, "-w", str(tmp_path), image,
         *encode_command("python", image_out, prepared)],
        env=PODMAN_ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    host_ids, host_vectors = read_embeddings(sorted(host_out.glob("*.parquet")))
    image_ids, image_vectors = read_embeddings(sorted(image_out.glob("*.parquet")))
    assert image_ids == host_ids and len(host_ids) > 100
    np.testing.assert_allclose(image_vectors, host_vectors, atol=1e-5)
    manifest = json.loads((image_out / "manifest.json").read_text())
    assert manifest["packages"]["torch"].startswith("2.13.0")
