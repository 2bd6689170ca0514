"""Good Broyden per sample in product form: one stored array, two passes per step.

With F(z) = z - f(z), H_0 = I and full steps, Broyden's good update has the product
form (Kelley, *Iterative Methods for Linear and Nonlinear Equations*, sec. 7.3)

    H_n = (I + s_n s_{n-1}^T / |s_{n-1}|^2) ... (I + s_1 s_0^T / |s_0|^2) H_0,
    s_{n+1} = w / (1 - s_n^T w / |s_n|^2),   w = -H_n F(z_{n+1}),

so only the steps s_j are stored: half the memory of the (U, V) form. The product
is applied through the small Gram matrix S^T S (kept up to date from small
quantities, never by a pass): one pass computes S^T F, a recursion on (B, M)
scalars gives the mixing coefficients, and a second pass forms w = -F + S c. The
deq-jax port read two arrays six times per step.

Layout: S is stored as blocks of `BLOCK` columns, (M / BLOCK, B, BLOCK, N), each a
contiguous (batch, memory, features) array; passes loop over the blocks in use
only, so a step's cost follows the columns written so far, not `max_iter`. Once
`memory` steps exist the oldest is dropped (a ring buffer; limited memory).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .base import SampleReduce, SolverConfig

BLOCK = 4


class BroydenState(NamedTuple):
    S: jax.Array      # (M / BLOCK, B, BLOCK, N) steps, slot j % M holds s_j
    gram: jax.Array   # (B, M, M) s_i . s_j by slot
    n: jax.Array      # index of the next step to store (steps 0..n-1 exist)


def history_shape(batch: int, features: int, cfg: SolverConfig) -> tuple[int, ...]:
    m = min(cfg.memory, cfg.max_iter)
    return (-(-m // BLOCK), batch, BLOCK, features)


def _dots(S, F, nblocks):
    """Local part of S^T F over the blocks in use -> (B, M)."""
    nb, B, C, _ = S.shape

    def body(i, d):
        return d.at[i].set(jnp.einsum("bcn,bn->bc", S[i], F))

    d = lax.fori_loop(0, nblocks, body, jnp.zeros_like(F, shape=(nb, B, C)))
    return jnp.moveaxis(d, 0, 1).reshape(B, nb * C)


def _combine(S, coef, base, nblocks):
    """base + sum_j coef[:, j] s_j over the blocks in use."""
    nb, B, C, _ = S.shape
    coef = jnp.moveaxis(coef.reshape(B, nb, C), 1, 0)
    return lax.fori_loop(0, nblocks, lambda i, w: w + jnp.einsum("bcn,bc->bn", S[i], coef[i]), base)


class Broyden:
    def init(self, z, fz, cfg: SolverConfig, reduce: SampleReduce) -> BroydenState:
        shape = history_shape(*z.shape, cfg)
        M = shape[0] * shape[2]
        return BroydenState(S=jnp.zeros_like(z, shape=shape), gram=reduce.zeros(z, (z.shape[0], M, M)),
                            n=jnp.zeros((), jnp.int32))

    def update(self, state: BroydenState, z, fz, k, cfg: SolverConfig, reduce: SampleReduce):
        nb, B, C, _ = state.S.shape
        M = nb * C
        n = state.n
        m = jnp.minimum(n, M)                      # steps stored: s_{n-m} .. s_{n-1}
        tiny = jnp.finfo(z.dtype).tiny
        F = z - fz
        d = reduce.psum(_dots(state.S, F, (m + C - 1) // C))    # s_i . F by slot
        sn2 = jnp.diagonal(state.gram, axis1=1, axis2=2)      # |s_i|^2 by slot

        # c_j = s_j . w_j / |s_j|^2 with w_j = -F + sum_{i<j} c_i s_{i+1}, in chronological order.
        def recur(t, coef):
            j = n - m + t
            sj, sj1 = j % M, (j + 1) % M
            sw = -d[:, sj] + jnp.einsum("bm,bm->b", state.gram[:, sj], coef)
            c = jnp.where(sn2[:, sj] > tiny, sw / jnp.maximum(sn2[:, sj], tiny), 0.0)
            return coef.at[:, sj1].set(c)

        coef = lax.fori_loop(0, jnp.maximum(m - 1, 0), recur, jnp.zeros_like(d))
        w = _combine(state.S, coef, -F, (m + C - 1) // C)
        # s_i . w for every stored step, from small quantities only.
        sw = -d + jnp.einsum("bij,bj->bi", state.gram, coef)
        last = (n - 1) % M
        ratio = jnp.where((n > 0) & (sn2[:, last] > tiny), sw[:, last] / jnp.maximum(sn2[:, last], tiny), 0.0)
        den = 1.0 - ratio
        den = jnp.where(jnp.abs(den) > 1e-6, den, 1.0)   # breakdown: take the un-updated step
        s_new = w / den[:, None]
        # New Gram row/column: s_i . s_new for the steps that stay, |s_new|^2 on the diagonal.
        slot = n % M
        row = sw / den[:, None]
        row = row.at[:, slot].set(reduce.dot(s_new, s_new))
        valid = (jnp.arange(M) < jnp.minimum(n + 1, M))
        row = jnp.where(valid[None], row, 0.0)
        gram = state.gram.at[:, slot, :].set(row).at[:, :, slot].set(row)
        S = state.S.at[slot // C, :, slot % C].set(s_new)
        return z + s_new, BroydenState(S=S, gram=gram, n=n + 1)
