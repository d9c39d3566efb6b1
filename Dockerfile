# One image per service (build targets). Each copies the core, its own package and only the
# shipped files it reads; only the inference and training targets install torch.
FROM python:3.11-slim AS base
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/tmp/digitflow PROMETHEUS_MULTIPROC_DIR=/tmp/digitflow/prom
RUN useradd --create-home --uid 10001 digitflow
COPY pyproject.toml README.md ./
# The core, with the shipped model versions (digitflow/shipped_models: MODEL_DIR's default).
COPY digitflow ./digitflow

FROM base AS gateway
COPY gateway ./gateway
RUN pip install '.[gateway,postgres]'
USER digitflow
EXPOSE 8000
CMD ["python", "-m", "gateway.serve"]

FROM base AS preprocess
COPY preprocess_worker ./preprocess_worker
RUN pip install '.[preprocess]'
USER digitflow
CMD ["celery", "-A", "preprocess_worker.worker:app", "worker", "-Q", "preprocess", "--concurrency", "2", "-n", "preprocess@%h", "--without-gossip", "--without-mingle"]

FROM base AS inference
COPY digitnet ./digitnet
COPY inference_worker ./inference_worker
# CPU wheels keep the image small; use a CUDA base image and the default index for GPUs.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu '.[inference]'
USER digitflow
CMD ["celery", "-A", "inference_worker.worker:app", "worker", "-Q", "inference", "--pool", "solo", "-n", "inference@%h", "--without-gossip", "--without-mingle"]

FROM base AS training
COPY digitnet ./digitnet
# training_worker/data holds the base data set (mnist_5k.npz: DATA_DIR's default).
COPY training_worker ./training_worker
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu '.[training,postgres]'
USER digitflow
CMD ["celery", "-A", "training_worker.worker:app", "worker", "-Q", "training", "--pool", "solo", "-n", "training@%h", "--without-gossip", "--without-mingle"]

FROM base AS registry
COPY registry_worker ./registry_worker
RUN pip install '.[registry]'
USER digitflow
CMD ["celery", "-A", "registry_worker.worker:app", "worker", "-Q", "registry", "--pool", "solo", "-n", "registry@%h", "--without-gossip", "--without-mingle"]

FROM python:3.11-slim AS mlflow
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MLFLOW_DISABLE_TELEMETRY=true
# The server matches the client pinned in pyproject's `registry` extra.
RUN pip install 'mlflow==3.17.2' && useradd --create-home --uid 10001 mlflow && mkdir /mlflow && chown mlflow /mlflow
USER mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--backend-store-uri", "sqlite:////mlflow/mlflow.db", "--artifacts-destination", "/mlflow/artifacts", "--host", "0.0.0.0"]

FROM base AS postprocess
COPY postprocess_worker ./postprocess_worker
RUN pip install '.[postprocess,postgres]'
USER digitflow
CMD ["celery", "-A", "postprocess_worker.worker:app", "worker", "-Q", "postprocess", "--pool", "solo", "-n", "postprocess@%h", "--without-gossip", "--without-mingle"]

FROM base AS monitor
COPY monitor_worker ./monitor_worker
RUN pip install '.[monitor,postgres]'
USER digitflow
CMD ["celery", "-A", "monitor_worker.worker:app", "worker", "-Q", "monitor", "--pool", "solo", "-n", "monitor@%h", "--without-gossip", "--without-mingle"]

FROM base AS flower
COPY digitflow_cli ./digitflow_cli
RUN pip install '.[flower]'
USER digitflow
EXPOSE 5555
CMD ["python", "-m", "digitflow_cli.flower"]
