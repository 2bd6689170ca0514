"""Causal attention in blocks with an online softmax, so no (S x S) score matrix exists.

Dense attention materialises B*H*S*S scores (and the backward keeps them, and the DEQ's
Jacobian term differentiates through that backward again), so memory grows with the
square of the context. Here the queries are cut into blocks of `block` positions and,
for each query block, the key blocks are visited in order with a running max, sum and
weighted value accumulator (the flash-attention recurrence, in plain JAX):

    m' = max(m, rowmax(s_j)),  l' = l e^(m - m') + rowsum(e^(s_j - m')),
    acc' = acc e^(m - m') + e^(s_j - m') v_j,          out = acc / l

Only the causal half is computed: query block i needs key blocks 0..i. Pairing query
block i with block n-1-i makes every pair need exactly n+1 key tiles, so the outer scan
runs over the n/2 pairs and the inner scan over n+1 tiles, with static trip counts and
n(n+1)/2 tiles in all instead of n^2 (an odd n gets one padded block more).

Both loops are `lax.scan`s with checkpointed bodies: the backward recomputes each block's
scores instead of keeping them, so what the gradient holds per query pair is the
inner loop's carries (two query blocks of accumulators per key tile), and only one
(block x block) score tile per (batch, head) is live at a time. It is ordinary JAX, so
`jax.vjp`, `jax.linearize` and reverse-over-reverse (the Jacobian term) all work.

A sequence that `block` does not divide is padded at the end: padded keys sit at
positions >= S, later than every real query, so the causal mask already hides them, and
padded query rows are dropped. Each query block visits key block 0 first, and position 0
is seen by every query, so the running max is finite after the first tile.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Score of a masked (future) key: finite, so exp(masked - m) underflows to 0 without NaNs.
_MASKED = -1e30


def blockwise_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int) -> jax.Array:
    """softmax(q k^T / sqrt(Dh) + causal mask) v for (B, S, H, Dh) inputs, `block` positions at a time.

    Scores and softmax statistics are float32 (float64 for float64 inputs); probabilities are cast to v's dtype for the
    value product (as `jax.nn.dot_product_attention` does), the accumulator is float32.
    """
    # The scope names its ops in the compiled program, so `deqdist compile` can count attention's FLOPs.
    with jax.named_scope("attention"):
        return _blockwise(q, k, v, block)


def _blockwise(q: jax.Array, k: jax.Array, v: jax.Array, block: int) -> jax.Array:
    b, s, h, dh = q.shape
    block = min(block, s)  # a short sequence is one block, not a padded one
    n = -(-s // block)
    n += n % 2 if n > 1 else 0  # query blocks go in pairs
    pad = n * block - s
    if pad:
        q, k, v = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
    scale = 1.0 / dh**0.5
    f32 = jnp.promote_types(q.dtype, jnp.float32)  # float64 stays float64

    def blocks(t):  # (B, n*block, H, Dh) -> (n, B, block, H, Dh)
        return jnp.moveaxis(t.reshape(b, n, block, h, dh), 1, 0)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    pos = jnp.arange(n * block, dtype=jnp.int32).reshape(n, block)
    pairs = max(n // 2, 1)  # n == 1: one "pair" of block 0 alone, one tile
    tiles = n + 1 if n > 1 else 1

    def pair(_, p):
        lo, q_lo, q_hi = p  # query blocks lo and n-1-lo

        # t <= lo: query block lo with key block t; then query block n-1-lo with key blocks 0..n-1-lo.
        def key_step(carry, t):
            hi = t > lo
            j = jnp.where(hi, t - lo - 1, t)
            q_i = jnp.where(hi, q_hi, q_lo)
            qpos = jnp.where(hi, n - 1 - lo, lo) * block + jnp.arange(block, dtype=jnp.int32)
            k_j, v_j = (jax.lax.dynamic_index_in_dim(x, j, keepdims=False) for x in (kb, vb))
            acc, m, l = (jnp.where(hi, b_, a_) for a_, b_ in zip(carry[0], carry[1]))
            sc = jnp.einsum("bqhd,bkhd->bqhk", q_i, k_j, preferred_element_type=f32) * scale
            sc = jnp.where(qpos[:, None, None] >= pos[j][None, None, :], sc, _MASKED)
            # The shift m cancels in acc / l: no gradient needs to flow through it.
            m_new = jax.lax.stop_gradient(jnp.maximum(m, sc.max(-1)))
            p_ = jnp.exp(sc - m_new[..., None])
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum("bqhk,bkhd->bqhd", p_.astype(v_j.dtype), v_j, preferred_element_type=f32)
            new = (acc * corr[..., None] + pv, m_new, l * corr + p_.sum(-1))
            keep_lo = tuple(jnp.where(hi, a_, b_) for a_, b_ in zip(carry[0], new))
            keep_hi = tuple(jnp.where(hi, b_, a_) for a_, b_ in zip(carry[1], new))
            return (keep_lo, keep_hi), None

        # Built from q_lo so that inside shard_map the carry varies over the same mesh axes.
        stat = jnp.zeros_like(q_lo[..., 0], dtype=f32)  # (B, block, H)
        init = (jnp.zeros_like(q_lo, dtype=f32), stat + _MASKED, stat)
        (lo_state, hi_state), _ = jax.lax.scan(jax.checkpoint(key_step), (init, init),
                                               jnp.arange(tiles, dtype=jnp.int32))
        out = tuple((acc / l[..., None]).astype(v.dtype) for acc, _, l in (lo_state, hi_state))
        return None, out

    lo_idx = jnp.arange(pairs, dtype=jnp.int32)
    _, (out_lo, out_hi) = jax.lax.scan(jax.checkpoint(pair), None, (lo_idx, qb[:pairs], qb[::-1][:pairs]))
    out = jnp.concatenate([out_lo, out_hi[::-1]]) if n > 1 else out_lo
    out = jnp.moveaxis(out, 0, 1).reshape(b, n * block, h, dh)
    return out[:, :s] if pad else out
