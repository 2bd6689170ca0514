"""Random fixed-point maps with known contraction, shared by solver, deq and benchmark tests."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def spectral_scaled(key, d, radius, symmetric=False, dtype=jnp.float32):
    a = jax.random.normal(key, (d, d), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    if symmetric:
        a = (a + a.T) / 2
        s = jnp.max(jnp.abs(jnp.linalg.eigvalsh(a)))
    else:
        s = jnp.linalg.norm(a, 2)
    return (a * radius / s).astype(dtype)


def tanh_map(seed, d, radius=0.7, symmetric=False, dtype=jnp.float32, inj_scale=1.0):
    """params, f(params, z, x) = tanh(z W + inj_scale * x U + b), a contraction when radius < 1."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "W": spectral_scaled(k1, d, radius, symmetric, dtype),
        "U": (jax.random.normal(k2, (d, d)) / np.sqrt(d)).astype(dtype),
        "b": (0.1 * jax.random.normal(k3, (d,))).astype(dtype),
    }

    def f(p, z, x):
        return jnp.tanh(z @ p["W"] + inj_scale * (x @ p["U"]) + p["b"])

    return params, f
