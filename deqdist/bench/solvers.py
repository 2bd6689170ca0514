"""`deqdist bench solvers`: root finders on f(z) = tanh(z W + x U), z of shape (8, 128, 256).

Cases: "easy" (random W, spectral norm 0.9, injection x) and "slow" (symmetric W,
spectral radius 0.9, injection 0.1 x). Reports f-evaluations, final max per-sample
relative residual and median wall time after compilation, to rel. residual 1e-4,
for each solver, the deq-jax-style full-width Broyden baseline, and Broyden with
max_iter 30 vs 100 (its cost must follow the columns in use, not max_iter).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..solvers import SolverConfig, solve
from .broyden_baseline import baseline_broyden
from .common import median_ms, table

SHAPE = (8, 128, 256)


def make_case(name: str, seed: int = 0):
    B, S, D = SHAPE
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    a = jax.random.normal(k1, (D, D))
    if name == "slow":
        a = (a + a.T) / 2
        W = a * 0.9 / jnp.max(jnp.abs(jnp.linalg.eigvalsh(a)))
        inj_scale = 0.1
    else:
        W = a * 0.9 / jnp.linalg.norm(a, 2)
        inj_scale = 1.0
    U = jax.random.normal(k2, (D, D)) / np.sqrt(D)
    inj = inj_scale * jax.random.normal(k3, (B, S, D)) @ U
    return lambda z: jnp.tanh(z @ W + inj)


def run(tol: float = 1e-4, repeats: int = 9) -> str:
    out = []
    for case in ("easy", "slow"):
        f = make_case(case)
        z0 = jnp.zeros(SHAPE)
        rows = []
        variants = [(m, SolverConfig(method=m, max_iter=mi, tol=tol), mi)
                    for m, mi in [("picard", 300), ("anderson", 30), ("broyden", 30), ("broyden", 100)]]
        times = {}
        for name, cfg, mi in variants:
            ms, (_, stats) = median_ms(jax.jit(lambda z0, cfg=cfg: solve(f, z0, cfg)), z0, repeats=repeats)
            times[(name, mi)] = ms
            rows.append([name, mi, int(stats.nstep.max()) + 1, f"{float(stats.rel_residual.max()):.2e}",
                         bool(stats.converged.all()), f"{ms:.1f}"])
        ms, (_, k, rel) = median_ms(jax.jit(lambda z0: baseline_broyden(f, z0, 30, tol)), z0, repeats=repeats)
        times[("baseline", 30)] = ms
        rows.append(["broyden (deq-jax full-width baseline)", 30, int(k) + 1, f"{float(rel):.2e}",
                     bool(rel <= tol), f"{ms:.1f}"])
        out.append(f"## {case} case, z {SHAPE}, target rel. residual {tol:g}\n")
        out.append(table(["solver", "max_iter", "f-evals", "max rel. residual", "converged", "median ms"], rows))
        out.append(
            f"\nbroyden speed-up over baseline: {times[('baseline', 30)] / times[('broyden', 30)]:.1f}x; "
            f"max_iter 100 vs 30 time ratio: {times[('broyden', 100)] / times[('broyden', 30)]:.2f}; "
            f"broyden vs picard time: {times[('broyden', 30)] / times[('picard', 300)]:.2f}x\n")
    return "\n".join(out)
