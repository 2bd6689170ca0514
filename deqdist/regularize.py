"""Jacobian diagnostics of a fixed-point map: Hutchinson ||J||_F^2 and power-method spectral radius.

Both work per sample (leading batch axis) and take a `SampleReduce`, so they run
unchanged inside `shard_map` where a sample is split across devices.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .solvers import SampleReduce


def hutchinson_jac_fro2(fz: Callable[[jax.Array], jax.Array], z: jax.Array, key: jax.Array,
                        n_samples: int = 1, reduce: SampleReduce = SampleReduce()) -> jax.Array:
    """Unbiased per-sample estimate of ||J_f(z)||_F^2 = E ||eps^T J||^2, eps ~ N(0, I).

    Differentiable (it is built from a vjp), so it can be added to a loss as the
    Jacobian regulariser of Bai et al. (2021).
    """
    _, vjp = jax.vjp(fz, z)
    total = jnp.zeros((z.shape[0],), jnp.promote_types(z.dtype, jnp.float32))
    for k in jax.random.split(key, n_samples):
        eps = jax.random.normal(k, z.shape, z.dtype)
        (vj,) = vjp(eps)
        total = total + reduce.dot(vj, vj)
    return total / n_samples


def spectral_radius(fz: Callable[[jax.Array], jax.Array], z: jax.Array, key: jax.Array,
                    n_iter: int = 30, reduce: SampleReduce = SampleReduce()) -> jax.Array:
    """Per-sample power-method estimate of the spectral radius of J_f(z) (no gradient)."""
    _, jvp = jax.linearize(fz, jax.lax.stop_gradient(z))
    v = jax.random.normal(key, z.shape, z.dtype)
    v = v / reduce.norm(v).reshape((-1,) + (1,) * (z.ndim - 1))

    def body(_, carry):
        v, _ = carry
        w = jvp(v)
        rho = reduce.norm(w)
        return w / jnp.maximum(rho, jnp.finfo(w.dtype).tiny).reshape((-1,) + (1,) * (z.ndim - 1)), rho

    _, rho = jax.lax.fori_loop(0, n_iter, body, (v, jnp.zeros_like(reduce.norm(v))))
    return jax.lax.stop_gradient(rho)


def jacobian_penalty(jac_per_dim: jax.Array, weight: float, target: float = 0.0) -> jax.Array:
    """The loss term weight * max(J - target, 0) of a normalised Jacobian estimate J.

    J = ||J_f(z*)||_F^2 / dim (e.g. `hutchinson_jac_fro2` / (S*D)). With target 0 it is the
    plain penalty of Bai et al. (2021); a positive target is a hinge that leaves the
    Jacobian free below it and holds it there, instead of pulling it toward 0 all
    the time (which costs quality while the model is still far from it).
    """
    return weight * jnp.maximum(jac_per_dim - target, 0.0)
