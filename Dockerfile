# deqdist on NVIDIA GPUs: CUDA JAX from pip wheels (the cuda12 extra of pyproject.toml).
#   docker build -t deqdist .
#   docker run --rm --gpus all --ipc=host -v $PWD/runs:/runs deqdist train --run-dir /runs/small --config small
# Python 3.11, the interpreter the pinned JAX stack is tested with. The CUDA runtime,
# cuDNN and NCCL come as pip wheels with jax[cuda12]; the base image needs only the driver
# that `docker run --gpus` mounts.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    JAX_PLATFORMS=cuda \
    XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"

RUN useradd --create-home --uid 1000 deqdist
WORKDIR /opt/deqdist
COPY --chown=deqdist pyproject.toml README.md ./
COPY --chown=deqdist deqdist ./deqdist
# One resolver call, every dependency from pyproject.toml.
RUN pip install ".[cuda12]"

RUN mkdir /runs && chown deqdist /runs
VOLUME ["/runs"]
USER deqdist
ENTRYPOINT ["deqdist"]
CMD ["--help"]
