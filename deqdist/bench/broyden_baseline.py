"""Full-width Broyden in the style of the deq-jax (Haiku) port, kept as a benchmark baseline.

It mirrors that code's data layout and work per step: U stored (B, N, max_iter) with
the memory index innermost, V^T stored (B, max_iter, N), every product over all
`max_iter` columns, and three full matvecs per step (rmatvec and matvec for the
update, matvec for the new direction): six passes over the history. Not for use in
training; it exists so `deqdist bench solvers` measures the speed-up, not recalls it.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _matvec(Us, VTs, x):
    return -x + jnp.einsum("bnm,bm->bn", Us, jnp.einsum("bmn,bn->bm", VTs, x))


def _rmatvec(Us, VTs, x):
    return -x + jnp.einsum("bm,bmn->bn", jnp.einsum("bn,bnm->bm", x, Us), VTs)


def baseline_broyden(f, z0, max_iter: int, tol: float):
    """Solve z = f(z) with relative-residual stopping (whole batch); returns (z, nstep, rel)."""
    shape = z0.shape
    B = shape[0]
    ff = lambda z: f(z.reshape(shape)).reshape(B, -1)
    z = z0.reshape(B, -1)
    gz = ff(z) - z
    N = z.shape[1]
    Us = jnp.zeros((B, N, max_iter), z.dtype)
    VTs = jnp.zeros((B, max_iter, N), z.dtype)

    def rel(z, gz):
        return jnp.linalg.norm(gz, axis=1) / jnp.linalg.norm(gz + z, axis=1)

    def cond(c):
        k, _, _, _, _, _, r = c
        return (k < max_iter) & (jnp.max(r) > tol)

    def body(c):
        k, z, gz, update, Us, VTs, _ = c
        dz = update
        z_new = z + dz
        gz_new = ff(z_new) - z_new
        dg = gz_new - gz
        vT = _rmatvec(Us, VTs, dz)
        u = (dz - _matvec(Us, VTs, dg)) / jnp.einsum("bn,bn->b", vT, dg)[:, None]
        Us = lax.dynamic_update_slice_in_dim(Us, u[:, :, None], k, axis=2)
        VTs = lax.dynamic_update_slice_in_dim(VTs, vT[:, None], k, axis=1)
        update = -_matvec(Us, VTs, gz_new)
        return k + 1, z_new, gz_new, update, Us, VTs, rel(z_new, gz_new)

    init = (jnp.zeros((), jnp.int32), z, gz, gz, Us, VTs, rel(z, gz))
    k, z, gz, _, _, _, r = lax.while_loop(cond, body, init)
    return z.reshape(shape), k, jnp.max(r)
