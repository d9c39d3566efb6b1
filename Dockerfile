# One image per service (build targets). Each copies the core, its own package and only the
# shipped files it reads; only the inference and training targets install torch.
#
# Every target installs its dependencies first, in a layer of their own made from pyproject.toml
# alone (an empty core package stands in for the code), then copies the code and installs it
# without dependencies: a code change rebuilds an image in seconds, not minutes.
FROM python:3.11-slim AS base
WORKDIR /app
# Where the images run (compose, Kubernetes) the root filesystem is read-only and /tmp is not:
# every path a service writes (HOME, VAR_DIR, the metrics folder) is under /tmp.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/tmp \
    VAR_DIR=/tmp/digitflow PROMETHEUS_MULTIPROC_DIR=/tmp/digitflow/prom
RUN useradd --create-home --uid 10001 digitflow
COPY pyproject.toml README.md ./
# Installs the dependencies of the extras in $1 (and any further pip arguments), then removes the
# placeholder distribution itself.
RUN printf '%s\n' '#!/bin/sh' 'set -e' 'mkdir -p digitflow && touch digitflow/__init__.py' \
      'extras=$1; shift' 'pip install -q "$@" ".[$extras]"' 'pip uninstall -q -y digitflow' \
      'rm -rf digitflow build ./*.egg-info' > /usr/local/bin/install-deps \
 && chmod +x /usr/local/bin/install-deps

FROM base AS gateway
RUN install-deps gateway,postgres
# The core, with the shipped model versions (digitflow/shipped_models: MODEL_DIR's default).
COPY digitflow ./digitflow
COPY gateway ./gateway
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
EXPOSE 8000
CMD ["python", "-m", "gateway.serve"]

FROM base AS preprocess
RUN install-deps preprocess
COPY digitflow ./digitflow
COPY preprocess_worker ./preprocess_worker
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
CMD ["celery", "-A", "preprocess_worker.worker:app", "worker", "-Q", "preprocess", "--concurrency", "2", "-n", "preprocess@%h", "--without-gossip", "--without-mingle"]

FROM base AS inference
# Where torch comes from is a build argument, never an edit: by default the CPU wheel index (a
# small image); TORCH_FIND_LINKS names folders of local wheels (deploy/offline/build-images.sh
# mounts this machine's into the build), TORCH_INDEX_URL other indexes (space-separated lists).
ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
RUN install-deps inference $(for u in $TORCH_INDEX_URL; do echo --extra-index-url "$u"; done) \
      $(for d in $TORCH_FIND_LINKS; do echo --find-links "$d"; done) "torch==$TORCH_VERSION"
COPY digitflow ./digitflow
COPY digitnet ./digitnet
COPY inference_worker ./inference_worker
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
CMD ["celery", "-A", "inference_worker.worker:app", "worker", "-Q", "inference", "--pool", "solo", "-n", "inference@%h", "--without-gossip", "--without-mingle"]

FROM base AS inference-cuda
# The image deploy/k8s/overlays/gpu names (digitflow/inference:cuda): the same service with
# PyPI's default torch for Linux, a CUDA build that brings its CUDA libraries as wheels, so a
# host with a current NVIDIA driver serves on the GPU. DEVICE=auto (the default) takes the GPU
# when one is visible and the CPU otherwise.
ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_FIND_LINKS=
RUN install-deps inference $(for u in $TORCH_INDEX_URL; do echo --extra-index-url "$u"; done) \
      $(for d in $TORCH_FIND_LINKS; do echo --find-links "$d"; done) "torch==$TORCH_VERSION"
COPY digitflow ./digitflow
COPY digitnet ./digitnet
COPY inference_worker ./inference_worker
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
CMD ["celery", "-A", "inference_worker.worker:app", "worker", "-Q", "inference", "--pool", "solo", "-n", "inference@%h", "--without-gossip", "--without-mingle"]

FROM base AS training
ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
RUN install-deps training,postgres $(for u in $TORCH_INDEX_URL; do echo --extra-index-url "$u"; done) \
      $(for d in $TORCH_FIND_LINKS; do echo --find-links "$d"; done) "torch==$TORCH_VERSION"
COPY digitflow ./digitflow
COPY digitnet ./digitnet
# training_worker/data holds the base data set (mnist_5k.npz: DATA_DIR's default).
COPY training_worker ./training_worker
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
CMD ["celery", "-A", "training_worker.worker:app", "worker", "-Q", "training", "--pool", "solo", "-n", "training@%h", "--without-gossip", "--without-mingle"]

FROM base AS registry
RUN install-deps registry
COPY digitflow ./digitflow
COPY registry_worker ./registry_worker
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
CMD ["celery", "-A", "registry_worker.worker:app", "worker", "-Q", "registry", "--pool", "solo", "-n", "registry@%h", "--without-gossip", "--without-mingle"]

FROM python:3.11-slim AS mlflow
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MLFLOW_DISABLE_TELEMETRY=true HOME=/tmp
# The server matches the client pinned in pyproject's `registry` extra.
RUN pip install -q 'mlflow==3.17.2' && useradd --create-home --uid 10001 mlflow && mkdir /mlflow && chown mlflow /mlflow
USER mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--backend-store-uri", "sqlite:////mlflow/mlflow.db", "--artifacts-destination", "/mlflow/artifacts", "--host", "0.0.0.0"]

FROM base AS postprocess
RUN install-deps postprocess,postgres
COPY digitflow ./digitflow
COPY postprocess_worker ./postprocess_worker
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
CMD ["celery", "-A", "postprocess_worker.worker:app", "worker", "-Q", "postprocess", "--pool", "solo", "-n", "postprocess@%h", "--without-gossip", "--without-mingle"]

FROM base AS monitor
RUN install-deps monitor,postgres
COPY digitflow ./digitflow
COPY monitor_worker ./monitor_worker
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
CMD ["celery", "-A", "monitor_worker.worker:app", "worker", "-Q", "monitor", "--pool", "solo", "-n", "monitor@%h", "--without-gossip", "--without-mingle"]

FROM base AS flower
RUN install-deps flower
COPY digitflow ./digitflow
COPY digitflow_cli ./digitflow_cli
RUN pip install -q --no-deps . && rm -rf build ./*.egg-info
USER digitflow
EXPOSE 5555
CMD ["python", "-m", "digitflow_cli.flower"]
