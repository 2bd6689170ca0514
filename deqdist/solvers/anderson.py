"""Anderson acceleration per sample, with a ridge-regularised least-squares mix.

History F_i = f(x_i) and G_i = f(x_i) - x_i, shape (B, m, N), as a ring buffer. The
Gram matrix G G^T is kept and only its new row is computed each step (one pass
over G); the mix alpha solves min ||alpha^T G||^2 s.t. sum(alpha) = 1 with a ridge
relative to the Gram diagonal, so an ill-conditioned or rank-deficient history
never makes the system singular. If the solve still yields non-finite weights,
the step falls back to a plain fixed-point step.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .base import SampleReduce, SolverConfig


class AndersonState(NamedTuple):
    F: jax.Array      # (B, m, N)
    G: jax.Array      # (B, m, N)
    gram: jax.Array   # (B, m, m)


class Anderson:
    def init(self, z, fz, cfg: SolverConfig, reduce: SampleReduce) -> AndersonState:
        B, N = z.shape
        m = cfg.anderson_m
        return AndersonState(F=jnp.zeros_like(z, shape=(B, m, N)), G=jnp.zeros_like(z, shape=(B, m, N)),
                             gram=reduce.zeros(z, (B, m, m)))

    def update(self, state: AndersonState, z, fz, k, cfg: SolverConfig, reduce: SampleReduce):
        B, m, _ = state.F.shape
        slot = k % m
        g = fz - z
        F = lax.dynamic_update_slice_in_dim(state.F, fz[:, None], slot, axis=1)
        G = lax.dynamic_update_slice_in_dim(state.G, g[:, None], slot, axis=1)
        row = reduce.psum(jnp.einsum("bmn,bn->bm", G, g))            # new row of G G^T
        gram = lax.dynamic_update_slice_in_dim(state.gram, row[:, None, :], slot, axis=1)
        gram = lax.dynamic_update_slice_in_dim(gram, row[:, :, None], slot, axis=2)

        valid = jnp.arange(m) < jnp.minimum(k + 1, m)               # (m,)
        vv = valid[:, None] & valid[None, :]
        diag_mean = jnp.sum(jnp.where(valid, jnp.diagonal(gram, axis1=1, axis2=2), 0), -1) / jnp.sum(valid)
        ridge = cfg.anderson_ridge * diag_mean + jnp.finfo(z.dtype).tiny
        H = jnp.where(vv, gram, 0) + jnp.eye(m, dtype=z.dtype) * jnp.where(valid, ridge[:, None], 1.0)[:, :, None]
        # Bordered system [[0, 1^T], [1, H]] [nu, alpha] = [1, 0], unused slots decoupled.
        ones = jnp.broadcast_to(valid.astype(z.dtype), (B, m))
        A = jnp.concatenate([
            jnp.concatenate([jnp.zeros((B, 1, 1), z.dtype), ones[:, None, :]], axis=2),
            jnp.concatenate([ones[:, :, None], H], axis=2)], axis=1)
        rhs = jnp.zeros((B, m + 1), z.dtype).at[:, 0].set(1.0)
        alpha = jnp.linalg.solve(A, rhs[..., None])[..., 0][:, 1:]
        fallback = jax.nn.one_hot(slot, m, dtype=z.dtype)
        bad = ~jnp.all(jnp.isfinite(alpha), axis=1, keepdims=True)
        alpha = jnp.where(bad, fallback[None], alpha)
        beta = cfg.anderson_beta
        z_next = jnp.einsum("bm,bmn->bn", alpha, F) - (1.0 - beta) * jnp.einsum("bm,bmn->bn", alpha, G)
        return z_next, AndersonState(F=F, G=G, gram=gram)
