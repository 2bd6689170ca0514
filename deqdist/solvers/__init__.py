"""Root finders for z* = f(z*): one config, one `solve` entry that dispatches by name."""
from __future__ import annotations

from typing import Callable

import jax

from .anderson import Anderson
from .base import METHODS, SampleReduce, SolverConfig, SolveStats, run
from .broyden import Broyden
from .picard import Picard

_METHODS = {"broyden": Broyden(), "anderson": Anderson(), "picard": Picard()}


def solve(f: Callable[[jax.Array], jax.Array], z0: jax.Array, cfg: SolverConfig,
          reduce: SampleReduce = SampleReduce()) -> tuple[jax.Array, SolveStats]:
    """Solve z = f(z) per sample from z0 (shape (B, ...)); returns (z*, SolveStats)."""
    cfg.validate()
    return run(_METHODS[cfg.method], f, z0, cfg, reduce)


__all__ = ["METHODS", "SampleReduce", "SolverConfig", "SolveStats", "solve"]
