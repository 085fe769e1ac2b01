# syntax=docker/dockerfile:1
# The operator image: the package without extras, i.e. exactly what `modelops run` imports (kopf, the
# kubernetes client, pydantic, prometheus-client, PyYAML; no torch, no tritonclient: the model check speaks
# Triton's HTTP API with the standard library), at the versions in requirements/lock.txt.
# tests/integration/test_shipped_install.py replays this file's COPY/ENV/RUN steps into a clean venv and
# runs the operator from it against the local cluster: change them together.
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t ghcr.io/modelops/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the package build reads (see .dockerignore): metadata, README (the package's readme), the lock, source.
COPY pyproject.toml README.md ./
COPY requirements/lock.txt ./requirements/
COPY operator ./operator
# Every pip below resolves within the lock, the isolated build of the package (setuptools) included.
ENV PIP_CONSTRAINT=/src/requirements/lock.txt
# The locked pip, then wheels for the package and its runtime dependencies (no trainer/serving/test extras).
RUN pip install --no-cache-dir pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# A fixed non-root UID/GID, matching the chart's runAsUser/runAsGroup (10001).
RUN groupadd --system --gid 10001 modelops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin modelops
# Only the wheels built above (one locked version of each), the lock applied once more.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements,target=/requirements \
    PIP_CONSTRAINT=/requirements/lock.txt pip install --no-cache-dir --no-index --find-links=/wheels modelops \
 && python -c "import modelops.runner, modelops.triton.check"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
# /healthz (liveness) and Prometheus /metrics; the chart passes the same ports as flags.
EXPOSE 8080 9090
ENTRYPOINT ["modelops"]
CMD ["run", "--log-format=json"]
