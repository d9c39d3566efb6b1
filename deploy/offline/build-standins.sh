#!/usr/bin/env bash
# Offline stand-ins for the public images compose.yaml names, for a machine that reaches Debian's
# and PyPI's package registries but no container image registry. For each name it first tries a
# real pull; only where that fails does it build a minimal image from Debian bookworm packages
# and tag it with the name compose uses, so compose.yaml itself runs unchanged. A normal Docker
# host pulls the real images and never runs this. Grafana has no Debian package and no stand-in:
# it is in compose's `dashboards` profile.
#
# Usage: deploy/offline/build-standins.sh [--force]   (podman; CONTAINERS_CONF is set below)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
force=${1:-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=localhost/digitflow-offline/debian:bookworm
work=$(mktemp -d /var/tmp/digitflow-standins.XXXXXX)
trap 'rm -rf "$work"' EXIT

have() { [ "$force" != --force ] && podman image exists "$1"; }

# A pull that the registry refuses fails at once here; the stand-in is only for that case.
pulled() { timeout 120 podman pull -q "$1" >/dev/null 2>&1; }

if ! have "$base"; then
  echo "building $base (debootstrap --variant=minbase bookworm)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  tar -C "$work/rootfs" -c . | podman import -q - "$base" >/dev/null
  rm -rf "$work/rootfs"
fi

# The CA bundle this machine's pip trusts (pip inside a build needs it); copied, never committed.
ca=$(python3 -c 'import os, ssl; print(os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile)')
mkdir -p "$work/context"
cp "$here"/*.Containerfile "$here"/*.sh "$here"/*.py "$work/context/"
cp "$ca" "$work/context/host-ca.crt"

# name -> Containerfile; python first, since the trace receiver is built on it.
standins=(
  "python:3.11-slim python"
  "redis:7-alpine redis"
  "postgres:16-alpine postgres"
  "prom/prometheus:v3.5.0 prometheus"
  "jaegertracing/jaeger:2.14.1 jaeger"
)
for entry in "${standins[@]}"; do
  read -r name file <<<"$entry"
  full=docker.io/$name
  [[ $name == */* ]] || full=docker.io/library/$name
  if have "$full"; then
    echo "$name: present"
  elif pulled "$full"; then
    echo "$name: pulled"
  else
    echo "$name: no registry answered; building the stand-in from $file.Containerfile"
    podman build -q --network host -f "$work/context/$file.Containerfile" -t "$full" "$work/context" >/dev/null
  fi
done
