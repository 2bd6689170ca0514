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
          reduce: SampleReduce = SampleReduce(), scale: jax.Array | None = None) -> tuple[jax.Array, SolveStats]:
    """Solve z = f(z) per sample from z0 (shape (B, ...)); returns (z*, SolveStats).

    The stop rule is in `deqdist.solvers.base`; `scale` (B,) is an optional known scale
    of each sample's problem (|b| for f(z) = A z + b) that the tolerance is relative to
    when it exceeds the first residual |f(z0) - z0|."""
    cfg.validate()
    return run(_METHODS[cfg.method], f, z0, cfg, reduce, scale)


__all__ = ["METHODS", "SampleReduce", "SolverConfig", "SolveStats", "solve"]
