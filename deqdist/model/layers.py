"""Small building blocks: named parameters, LayerNorm, rotary embeddings."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# The only logical axis names a parameter may carry (parallel/ maps them to mesh axes).
LOGICAL_AXES = ("vocab", "embed", "heads", "head_dim", "mlp")


def named_param(
    rngs: nnx.Rngs | None,
    init,
    shape: Sequence[int],
    names: tuple[str | None, ...],
    dtype,
) -> nnx.Param:
    """An nnx.Param initialised by `init(key, shape, dtype)` with logical axis names.

    Eager sharding is off: the names are *logical*; parallel/ maps them to mesh
    axes (nnx.get_partition_spec on the state gives the names back).
    """
    assert len(names) == len(shape), (names, shape)
    assert all(n is None or n in LOGICAL_AXES for n in names), names
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(
        nnx.with_partitioning(init, tuple(names), eager_sharding=False)(key, tuple(shape), dtype)
    )


def _const(value):
    def init(key, shape, dtype):
        del key
        return jnp.full(shape, value, dtype)

    return init


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in float32 (float64 for float64 inputs), returned in the input dtype."""

    def __init__(self, dim: int, *, eps: float, scale_init: float = 1.0, dtype=jnp.float32):
        self.eps = eps
        self.scale = named_param(None, _const(scale_init), (dim,), ("embed",), dtype)
        self.bias = named_param(None, _const(0.0), (dim,), ("embed",), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        at = jnp.promote_types(x.dtype, jnp.float32)
        x32 = x.astype(at)
        mean = x32.mean(-1, keepdims=True)
        xc = x32 - mean
        var = jnp.mean(xc * xc, -1, keepdims=True)
        y = xc * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(at) + self.bias[...].astype(at)
        return y.astype(x.dtype)


def rope(x: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding of x (B, S, H, Dh) at positions 0..S-1 ("rotate half")."""
    return rope_at(x, jnp.arange(x.shape[1])[None], base)


def rope_at(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding of x (B, S, H, Dh) at `positions`, broadcastable to (B, S); computed in
    float32 (float64 for float64 inputs)."""
    dh = x.shape[-1]
    half = dh // 2
    at = jnp.promote_types(x.dtype, jnp.float32)
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=at) / half))
    ang = jnp.asarray(positions, at)[..., None] * inv_freq  # (B|1, S, half)
    cos = jnp.cos(ang)[:, :, None, :]
    sin = jnp.sin(ang)[:, :, None, :]
    x32 = x.astype(at)
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x.dtype)
