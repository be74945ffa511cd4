#!/usr/bin/env bash
# Build the stage image with podman from a Debian 12 root filesystem made by debootstrap (no registry needed).
#   envs/container/build.sh [TAG]          TAG defaults to localhost/hardneg:0.1.0
# Env: TORCH_SPEC (default torch==2.13.0, the CPU build), WHEELS (a local wheel folder to offer pip, optional),
#      PIP_CERT (a CA bundle for pip, e.g. behind a TLS-intercepting proxy; taken from pip's env if set),
#      MIRROR (Debian mirror for debootstrap). Needs root, podman, debootstrap (apt-get install podman runc debootstrap).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-localhost/hardneg:0.1.0}
base=localhost/hardneg-base:bookworm
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
if ! podman image exists "$base"; then
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
    "${MIRROR:-http://deb.debian.org/debian}" >/dev/null
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
fi
args=(--network host --build-arg "BASE=$base" --build-arg "TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}")
if [ -n "${WHEELS:-}" ]; then
  args+=(--volume "$WHEELS:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
fi
if [ -n "${PIP_CERT:-}" ]; then
  args+=(--volume "$PIP_CERT:/etc/hardneg-ca.crt:ro" --build-arg PIP_CERT=/etc/hardneg-ca.crt)
fi
podman build "${args[@]}" -f "$here/Containerfile" -t "$tag" "$root"
echo "built $tag"
