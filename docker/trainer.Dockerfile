# syntax=docker/dockerfile:1
# The trainer image that TrainingJob pods run (`python -m modelops.trainer`, the operator's default
# command): the package with its `trainer` extra (torch, numpy, scikit-learn) at the versions in
# requirements/lock.txt, the same ones the tests train with. torch's PyPI wheel brings its CUDA runtime
# libraries as nvidia-* wheels (see the lock); the NVIDIA driver comes from the node (device plugin /
# GPU Operator) and must support that CUDA major version. On nodes without a GPU it trains on CPU.
# tests/integration/test_shipped_install.py replays this file's COPY/RUN steps into a clean venv and trains
# from it: change them together.
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t ghcr.io/modelops/trainer:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

RUN groupadd --system --gid 10001 modelops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin modelops
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/lock.txt ./requirements/
COPY operator ./operator
# The locked pip, then the package with the trainer extra, every version from the lock (the built-in
# digits data set ships inside scikit-learn: no download at training time).
RUN PIP_CONSTRAINT=/src/requirements/lock.txt pip install --no-cache-dir pip \
 && PIP_CONSTRAINT=/src/requirements/lock.txt pip install --no-cache-dir '.[trainer]' \
 && python -c "import torch, modelops.trainer; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && rm -rf /src
WORKDIR /tmp
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# The model repository volume must be writable by this UID (e.g. pod fsGroup 10001 or volume permissions).
USER 10001:10001
CMD ["python", "-m", "modelops.trainer", "--help"]
