# syntax=docker/dockerfile:1
# The trainer image that TrainingJob pods run (`python -m modelops.trainer`, the operator's default
# command): CUDA-enabled PyTorch plus the package with its `trainer` extra.
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t ghcr.io/modelops/trainer:0.1.0 .
# The base ships torch built for CUDA 12.4 and Python 3.11; the NVIDIA driver comes from the node
# (device plugin / GPU Operator), not from the image.
ARG TORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${TORCH_IMAGE}

RUN groupadd --system --gid 10001 modelops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin modelops
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# The base's torch already satisfies the extra's torch>=2.2, so pip keeps the CUDA build and adds
# numpy<2 and scikit-learn (the built-in digits data set ships inside scikit-learn: no download).
RUN pip install --no-cache-dir '.[trainer]' \
 && python -c "import torch, modelops.trainer; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && rm -rf /src
WORKDIR /tmp
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# The model repository volume must be writable by this UID (e.g. pod fsGroup 10001 or volume permissions).
USER 10001:10001
CMD ["python", "-m", "modelops.trainer", "--help"]
