# One image per service kind (build targets). Only the inference target installs torch; only the
# inference, registry and mlflow targets install MLflow.
FROM python:3.11-slim AS base
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/tmp/digitflow PROMETHEUS_MULTIPROC_DIR=/tmp/digitflow/prom
RUN useradd --create-home --uid 10001 digitflow
COPY pyproject.toml README.md ./
COPY digitflow ./digitflow

FROM base AS gateway
COPY gateway ./gateway
RUN pip install '.[gateway,postgres]'
USER digitflow
EXPOSE 8000
CMD ["gunicorn", "-c", "gateway/gunicorn_conf.py", "gateway:create_app()"]

FROM base AS preprocess
COPY preprocess_worker ./preprocess_worker
RUN pip install '.[preprocess]'
USER digitflow
CMD ["celery", "-A", "preprocess_worker.worker:app", "worker", "-Q", "preprocess", "--concurrency", "2", "-n", "preprocess@%h", "--without-gossip", "--without-mingle"]

FROM base AS inference
COPY inference_worker ./inference_worker
COPY models ./models
# CPU wheels keep the image small; use a CUDA base image and the default index for GPUs.
# The same image runs the training worker (inference_worker.training: retraining on feedback).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu '.[inference,registry,monitor,postgres]'
USER digitflow
CMD ["celery", "-A", "inference_worker.worker:app", "worker", "-Q", "inference", "--concurrency", "1", "-n", "inference@%h", "--without-gossip", "--without-mingle"]

FROM base AS registry
COPY registry_worker ./registry_worker
# The shipped models: registered as version 1 / production when the registry is empty.
COPY models ./models
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
CMD ["celery", "-A", "postprocess_worker.worker:app", "worker", "-Q", "postprocess", "--concurrency", "1", "-n", "postprocess@%h", "--without-gossip", "--without-mingle"]

FROM base AS monitor
COPY monitor_worker ./monitor_worker
COPY models ./models
RUN pip install '.[monitor,postgres]'
USER digitflow
CMD ["celery", "-A", "monitor_worker.worker:app", "worker", "-Q", "monitor", "--pool", "solo", "-n", "monitor@%h", "--without-gossip", "--without-mingle"]

FROM base AS flower
RUN pip install '.[flower]'
USER digitflow
EXPOSE 5555
CMD ["python", "-m", "digitflow.flower"]
