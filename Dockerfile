# One image per service kind (build targets). Only the inference target installs torch.
FROM python:3.11-slim AS base
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/tmp/digitflow PROMETHEUS_MULTIPROC_DIR=/tmp/digitflow/prom
RUN useradd --create-home --uid 10001 digitflow
COPY pyproject.toml README.md ./
COPY digitflow ./digitflow

FROM base AS gateway
COPY gateway ./gateway
RUN pip install '.[gateway]'
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
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu '.[inference]'
USER digitflow
CMD ["celery", "-A", "inference_worker.worker:app", "worker", "-Q", "inference", "--concurrency", "1", "-n", "inference@%h", "--without-gossip", "--without-mingle"]

FROM base AS postprocess
COPY postprocess_worker ./postprocess_worker
RUN pip install .
USER digitflow
CMD ["celery", "-A", "postprocess_worker.worker:app", "worker", "-Q", "postprocess", "--concurrency", "1", "-n", "postprocess@%h", "--without-gossip", "--without-mingle"]

FROM base AS flower
RUN pip install '.[flower]'
USER digitflow
EXPOSE 5555
CMD ["python", "-m", "digitflow.flower"]
