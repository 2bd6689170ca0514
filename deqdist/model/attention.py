"""Causal attention in blocks with an online softmax, so no (S x S) score matrix exists.

Dense attention materialises B*H*S*S scores (and the backward keeps them, and the DEQ's
Jacobian term differentiates through that backward again), so memory grows with the
square of the context. Here the queries are cut into blocks of `block` positions and,
for each query block, the key blocks are visited in order with a running max, sum and
weighted value accumulator (the flash-attention recurrence, in plain JAX):

    m' = max(m, rowmax(s_j)),  l' = l e^(m - m') + rowsum(e^(s_j - m')),
    acc' = acc e^(m - m') + e^(s_j - m') v_j,          out = acc / l

Both loops are `lax.scan`s with checkpointed bodies: the backward recomputes each block's
scores instead of keeping them, so what the gradient holds per query block is the
inner loop's carries (one query block of accumulators per key block), and only one
(block x block) score tile per (batch, head) is live at a time. It is ordinary JAX, so
`jax.vjp`, `jax.linearize` and reverse-over-reverse (the Jacobian term) all work.

A sequence that `block` does not divide is padded at the end: padded keys sit at
positions >= S, later than every real query, so the causal mask already hides them, and
padded query rows are dropped. Key block 0 holds position 0, which every query sees, so
the running max is finite after the first step and fully masked tiles add exactly 0.
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
    b, s, h, dh = q.shape
    block = min(block, s)  # a short sequence is one block, not a padded one
    n = -(-s // block)
    pad = n * block - s
    if pad:
        q, k, v = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
    scale = 1.0 / dh**0.5
    f32 = jnp.promote_types(q.dtype, jnp.float32)  # float64 stays float64

    def blocks(t):  # (B, n*block, H, Dh) -> (n, B, block, H, Dh)
        return jnp.moveaxis(t.reshape(b, n, block, h, dh), 1, 0)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    pos = jnp.arange(n * block, dtype=jnp.int32).reshape(n, block)

    def query_block(_, qi):
        q_i, qpos = qi

        # q_i is closed over (a constant of the inner loop), so the loop's saved carries
        # are only the accumulator and the statistics.
        def key_step(carry, kv):
            acc, m, l = carry
            k_j, v_j, kpos = kv
            sc = jnp.einsum("bqhd,bkhd->bqhk", q_i, k_j, preferred_element_type=f32) * scale
            sc = jnp.where(qpos[:, None, None] >= kpos[None, None, :], sc, _MASKED)
            # The shift m cancels in acc / l: no gradient needs to flow through it.
            m_new = jax.lax.stop_gradient(jnp.maximum(m, sc.max(-1)))
            p = jnp.exp(sc - m_new[..., None])
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum("bqhk,bkhd->bqhd", p.astype(v_j.dtype), v_j, preferred_element_type=f32)
            return (acc * corr[..., None] + pv, m_new, l * corr + p.sum(-1)), None

        # Built from q_i so that inside shard_map the carry varies over the same mesh axes.
        stat = jnp.zeros_like(q_i[..., 0], dtype=f32)  # (B, block, H)
        init = (jnp.zeros_like(q_i, dtype=f32), stat + _MASKED, stat)
        (acc, _, l), _ = jax.lax.scan(jax.checkpoint(key_step), init, (kb, vb, pos))
        return None, (acc / l[..., None]).astype(v.dtype)

    _, out = jax.lax.scan(jax.checkpoint(query_block), None, (qb, pos))
    out = jnp.moveaxis(out, 0, 1).reshape(b, n * block, h, dh)
    return out[:, :s] if pad else out
