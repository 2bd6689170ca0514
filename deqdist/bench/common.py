"""Timing helpers shared by the benchmarks: compile once, then take the median of runs."""
from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np


def median_ms(fn: Callable, *args, repeats: int = 5) -> tuple[float, object]:
    """Median wall time in ms of fn(*args) after one warm-up (compilation) call."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3, out


def table(headers: list[str], rows: list[list]) -> str:
    """A plain fixed-width text table (also valid Markdown)."""
    cells = [[str(c) for c in r] for r in [headers] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])
