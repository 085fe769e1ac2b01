# syntax=docker/dockerfile:1
# The operator image: kopf + the kubernetes client, no torch (the operator never imports it).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t ghcr.io/modelops/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the package build reads (see .dockerignore): metadata, README (the package's readme), source.
COPY pyproject.toml README.md ./
COPY operator ./operator
# Wheels for the package and its runtime dependencies, without the trainer/serving/test extras.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# A fixed non-root UID/GID, matching the chart's runAsUser/runAsGroup (10001).
RUN groupadd --system --gid 10001 modelops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin modelops
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels modelops
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
# /healthz (liveness) and Prometheus /metrics; the chart passes the same ports as flags.
EXPOSE 8080 9090
ENTRYPOINT ["modelops"]
CMD ["run", "--log-format=json"]
