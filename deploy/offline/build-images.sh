#!/usr/bin/env bash
# Builds every Dockerfile target with podman under the names compose.yaml gives them
# (digitflow/<target>:latest), with torch from this machine's disk instead of the network:
# the CPU targets take the CPU wheel in /opt/wheels, inference-cuda the CUDA build in
# /opt/pypi-more (both mounted read-only into the build, never copied into the context). On a
# normal Docker host `docker compose build` does the same with the Dockerfile's defaults.
#
# Usage: deploy/offline/build-images.sh [TARGET ...]   (default: every target but inference-cuda)
# Environment: DIGITFLOW_TAG (default latest).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/deploy/offline/containers.conf}
tag=${DIGITFLOW_TAG:-latest}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gateway preprocess inference postprocess registry mlflow monitor training flower)

cpu_wheels=${TORCH_CPU_WHEELS:-/opt/wheels}
cuda_index=${TORCH_CUDA_INDEX:-/opt/pypi-more}

for target in "${targets[@]}"; do
  # Host networking for RUN steps: pip and apt then reach the registries exactly as this machine
  # does (through the bridge, name lookups from build containers failed now and then).
  args=(--target "$target" -t "docker.io/digitflow/$target:$tag" --network host
        --label "org.opencontainers.image.title=digitflow-$target")
  case $target in
    inference | training)
      if [ -d "$cpu_wheels" ]; then
        version=$(ls "$cpu_wheels" | sed -n 's/^torch-\([0-9.]*\)+cpu-.*/\1/p' | sort -V | tail -1)
        [ -n "$version" ] || { echo "no torch CPU wheel in $cpu_wheels" >&2; exit 1; }
        args+=(-v "$cpu_wheels:/wheels:ro" --build-arg "TORCH_FIND_LINKS=/wheels" --build-arg "TORCH_INDEX_URL="
               --build-arg "TORCH_VERSION=$version")
      fi
      ;;
    inference-cuda)
      [ ! -d "$cuda_index/simple" ] \
        || args+=(-v "$cuda_index:/wheels:ro" --build-arg "TORCH_INDEX_URL=file:///wheels/simple")
      args[3]="docker.io/digitflow/inference:cuda"
      ;;
  esac
  start=$(date +%s)
  podman build -q "${args[@]}" -f "$root/Dockerfile" "$root" >/dev/null
  echo "built digitflow/$target ($(( $(date +%s) - start )) s)"
done
