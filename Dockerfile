# syntax=docker/dockerfile:1
# deqdist on NVIDIA GPUs: CUDA JAX from pip wheels (the cuda12 extra of pyproject.toml).
#   docker build -t deqdist .
#   docker run --rm --gpus all --ipc=host --user "$(id -u):$(id -g)" -v "$PWD/runs:/runs" deqdist \
#     train --run-dir /runs/small --config small
# --user: a bind-mounted directory keeps its owner on the host, so the container must run as
# that owner to write checkpoints (without it, uid 1000 gets deqdist's one-line "not writable"
# error). launch/gpu_docker.sh passes the run dir owner's --user itself.
# Python 3.11, the interpreter the pinned JAX stack is tested with. The CUDA runtime,
# cuDNN and NCCL come as pip wheels with jax[cuda12]; the base image needs only the driver
# that `docker run --gpus` mounts. JAX_PLATFORMS is not set here: JAX picks the GPU, and a
# container started without --gpus gets deqdist's one-line platform error instead of a traceback
# (set -e JAX_PLATFORMS=cuda to require the GPU, as gpu_docker.sh does).
FROM python:3.11-slim-bookworm

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"

RUN useradd --create-home --uid 1000 deqdist
WORKDIR /opt/deqdist
# The dependency layer: pyproject.toml and an empty package only (the directories of the packages
# it lists, configs/ among them), so editing the source reuses it instead of reinstalling gigabytes
# of CUDA wheels. One resolver call, every dependency from pyproject.toml; the cache mount keeps
# downloaded wheels across builds.
COPY pyproject.toml ./
RUN python -c "import os, tomllib; s = tomllib.load(open('pyproject.toml', 'rb'))['tool']['setuptools']; [os.makedirs(s['package-dir'].get(p, p.replace('.', '/')), exist_ok=True) for p in s['packages']]" \
    && touch deqdist/__init__.py README.md
# hadolint ignore=DL3013  # the versions are pinned in pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip pip install ".[cuda12]"
# The source layer: deqdist itself and its presets (configs/, package data), its dependencies
# already satisfied.
COPY README.md ./
COPY configs ./configs
COPY deqdist ./deqdist
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps --force-reinstall .

# Any uid may write /runs when nothing is mounted there (e.g. with --user).
RUN mkdir /runs && chmod 1777 /runs
VOLUME ["/runs"]
USER 1000
ENTRYPOINT ["deqdist"]
CMD ["--help"]
