"""Incremental decoding of the causal DEQ: one fixed-point solve of one position per token.

Position t of f reads positions <= t of z and x only, so the equilibrium of the
first t positions does not change when tokens are appended. Decoding therefore
keeps the keys and values that f's attention reads at the equilibrium states of
the tokens so far (`KVCache`), and each new token solves z_t = f(z_t, x_t) for
a (B, 1, D) state whose attention reads the cache and itself, warm-started from
z*_{t-1}. After the solve its keys/values (from z*_t) enter the cache.

The cache is a ring buffer of C = seq_len - 1 slots: position p lives in slot
p mod C, so a new token attends to at most the seq_len - 1 positions before it
and itself, the training context. Keys are stored un-rotated and rotated per
token by their distance to the query (RoPE scores depend on distance only):
the query sits at position min(t, C) and a key d positions back at min(t, C) - d,
so every rotation angle stays within the trained 0..seq_len-1.

What the cached path computes:
* t < seq_len: exactly the causal model on the whole sequence, positions 0..t,
  i.e. the same fixed point as the windowed re-solve (up to solver tolerance).
* t >= seq_len: the equilibrium of the whole sequence under *sliding-window*
  causal attention of width seq_len (each position attends to itself and the
  seq_len - 1 before it, at their relative distances), solved position by
  position. The windowed re-solve instead restarts the last seq_len tokens as
  if they began the text (positions 0..seq_len-1, the oldest one attending to
  nothing before it), so the two differ there by design.

Batches of prompts of different lengths are right-padded: each row's prompt sits
at positions 0..len-1, as in training, and causal attention keeps the padding
after it from touching any real position, so the prompt is solved by the
unmodified model in one causal solve. Every per-row quantity (position, ring
slot, validity mask) is a (B,) array, so rows advance independently.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from deqdist.deq import DEQConfig
from deqdist.model.block import prepare_block_params
from deqdist.model.layers import rope_at
from deqdist.model.hooks import SolveHooks
from deqdist.model.transformer import DEQTransformer
from deqdist.solvers import SampleReduce, SolveStats, solve


class KVCache(NamedTuple):
    """Decoding state per row: un-rotated keys/values of the last C positions and the last z*."""

    k: jax.Array  # (B, C, H, Dh) compute dtype; slot p % C holds position p
    v: jax.Array  # (B, C, H, Dh)
    length: jax.Array  # (B,) int32: positions in the cache so far = position of the next token
    z: jax.Array  # (B, 1, D) equilibrium state of position length-1 (the next solve's start)


def capacity(model: DEQTransformer) -> int:
    """Ring-buffer slots: the seq_len - 1 positions a new token attends to besides itself."""
    if model.cfg.seq_len < 2:
        raise ValueError(f"decoding with a KV cache needs model.seq_len >= 2, got {model.cfg.seq_len}")
    return model.cfg.seq_len - 1


def _prepared_block(model: DEQTransformer):
    graphdef, params = nnx.split(model.block)
    return nnx.merge(graphdef, prepare_block_params(params, model.cfg))


def _slot_positions(length: jax.Array, c: int) -> jax.Array:
    """(B, C): the newest position p < length with p % C == slot (negative if none yet)."""
    j = jnp.arange(c)[None]
    last = length[:, None] - 1
    return last - jnp.mod(last - j, c)


def prefill(model: DEQTransformer, tokens: jax.Array, lengths: jax.Array,
            deq_cfg: DEQConfig) -> tuple[jax.Array, KVCache, SolveStats]:
    """Solve the right-padded prompts (B, P) once, causally, and fill the cache from z*.

    Returns the logits (B, V) at each row's last prompt token, the cache, and the
    prompt solve's stats. P <= seq_len; 1 <= lengths <= P.
    """
    c = capacity(model)
    if tokens.shape[1] > model.cfg.seq_len:
        raise ValueError(f"prompt buffer of {tokens.shape[1]} tokens is longer than seq_len {model.cfg.seq_len}")
    z, aux = model.features(tokens, SolveHooks(deq_cfg=deq_cfg))
    k, v = _prepared_block(model).keys_values(z, model.inject(tokens))
    last = (lengths - 1)[:, None, None]
    z_last = jnp.take_along_axis(z, last, axis=1)  # (B, 1, D)
    pos = jnp.maximum(_slot_positions(lengths, c), 0)[:, :, None, None]
    cache = KVCache(k=jnp.take_along_axis(k, pos, axis=1), v=jnp.take_along_axis(v, pos, axis=1),
                    length=lengths.astype(jnp.int32), z=z_last)
    return model.head(z_last)[:, 0], cache, aux["fwd_stats"]


def step(model: DEQTransformer, cache: KVCache, token: jax.Array,
         deq_cfg: DEQConfig) -> tuple[jax.Array, KVCache, SolveStats]:
    """Append `token` (B,) at each row's next position: solve its equilibrium against the
    cache (forward solver of deq_cfg, from the previous z*), return its logits (B, V),
    the updated cache and the solve's stats."""
    c = capacity(model)
    rope_base = model.cfg.rope_base
    t = cache.length  # (B,) position of the new token
    qpos = jnp.minimum(t, c)[:, None]  # (B, 1)
    dist = t[:, None] - _slot_positions(t, c)  # (B, C) in 1..C for filled slots
    k_cache = rope_at(cache.k, qpos - dist, rope_base)  # fixed during the solve: rotated once
    valid = jnp.arange(c)[None] < t[:, None]
    mask = jnp.concatenate([valid, jnp.ones_like(valid[:, :1])], axis=1)[:, None, None, :]

    def attend(q, k, v):
        keys = jnp.concatenate([k_cache, rope_at(k, qpos, rope_base)], axis=1)
        values = jnp.concatenate([cache.v, v], axis=1)
        return jax.nn.dot_product_attention(rope_at(q, qpos, rope_base), keys, values, mask=mask)

    block = _prepared_block(model)
    x = model.inject(token[:, None])

    def f(z):
        return block(z, x, attend=attend)

    # Judge the warm-started solve on the scale a cold start of this position has (|f(0)|, as the
    # whole-sequence solve from zeros does): a good warm start then saves iterations instead of
    # tightening the tolerance, which is relative to the starting residual.
    scale = SampleReduce().norm(f(jnp.zeros_like(cache.z)))
    z, stats = solve(f, cache.z, deq_cfg.fwd, scale=scale)
    k_new, v_new = block.keys_values(z, x)
    rows = jnp.arange(token.shape[0])
    slot = jnp.mod(t, c)
    cache = KVCache(k=cache.k.at[rows, slot].set(k_new[:, 0]), v=cache.v.at[rows, slot].set(v_new[:, 0]),
                    length=t + 1, z=z)
    return model.head(z)[:, 0], cache, stats


__all__ = ["KVCache", "capacity", "prefill", "step"]
