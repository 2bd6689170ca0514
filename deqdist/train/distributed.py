"""Multi-host start-up: one process per host, `jax.distributed.initialize` before any device is touched.

Triggered by flags (--coordinator HOST:PORT --num-processes N --process-id I),
by the same values in the environment (DEQDIST_COORDINATOR,
DEQDIST_NUM_PROCESSES, DEQDIST_PROCESS_ID), or by --distributed / DEQDIST_DISTRIBUTED=1
alone, which lets JAX discover the cluster itself (TPU pods, SLURM, ...).
"""
from __future__ import annotations

import os

from deqdist.config import ConfigError


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} must be an integer") from None


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, auto: bool = False) -> bool:
    """Call jax.distributed.initialize when asked to; returns whether it did."""
    coordinator = coordinator or os.environ.get("DEQDIST_COORDINATOR") or None
    num_processes = num_processes if num_processes is not None else _env_int("DEQDIST_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("DEQDIST_PROCESS_ID")
    auto = auto or os.environ.get("DEQDIST_DISTRIBUTED", "") not in ("", "0")
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError("multi-process runs need all of --coordinator, --num-processes and --process-id "
                          "(or DEQDIST_COORDINATOR / DEQDIST_NUM_PROCESSES / DEQDIST_PROCESS_ID)")
    if not (auto or any(given)):
        return False
    import jax

    if all(given):
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id {process_id} is not in [0, --num-processes={num_processes})")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()
    return True
