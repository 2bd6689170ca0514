"""Timing helpers shared by the benchmarks: compile once, then take the median of runs.

The tables they print are deqdist.report.table (re-exported here for the benchmarks).
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from deqdist.report import table

__all__ = ["median_ms", "table"]


def median_ms(fn: Callable, *args, repeats: int = 5) -> tuple[float, object]:
    """Median wall time in ms of fn(*args) after one warm-up (compilation) call."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3, out
