"""Damped fixed-point (Picard) iteration: z <- (1 - damping) z + damping f(z)."""
from __future__ import annotations

from .base import SampleReduce, SolverConfig


class Picard:
    def init(self, z, fz, cfg: SolverConfig, reduce: SampleReduce):
        return ()

    def update(self, state, z, fz, k, cfg: SolverConfig, reduce: SampleReduce):
        d = cfg.damping
        return (1.0 - d) * z + d * fz if d != 1.0 else fz, state
