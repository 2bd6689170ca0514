"""Blockwise causal attention (model.attention_block) equals dense attention.

Values, gradients and the gradient of a vjp (what the Jacobian term differentiates)
in float64 to ~1e-12, for blocks that divide the sequence and blocks that do not;
the block inside the model; and a DEQ step with it on a sharded mesh equals the
single-device step with dense attention.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deqdist.model import DEQTransformer
from model_presets import get_preset
from deqdist.model.attention import blockwise_causal_attention
from harness import deq_cfg, max_rel_err, reference_step, sharded_step

S = 20


def _dense(q, k, v):
    sc = jnp.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    sc = jnp.where(jnp.tril(jnp.ones((q.shape[1],) * 2, bool)), sc, -jnp.inf)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(sc, -1), v)


def _qkv(dtype, s=S):
    keys = jax.random.split(jax.random.key(0), 3)
    return tuple(jax.random.normal(k, (2, s, 3, 8), dtype) for k in keys)


@pytest.mark.parametrize("block", [4, 7, 32])  # 7 does not divide S = 20 (padded); 32 > S (one block)
def test_values_and_gradients_float64(block):
    with jax.enable_x64(True):
        q, k, v = _qkv(jnp.float64)
        np.testing.assert_allclose(blockwise_causal_attention(q, k, v, block), _dense(q, k, v), rtol=0, atol=1e-12)
        w = jax.random.normal(jax.random.key(1), q.shape, jnp.float64)

        def loss(attn):
            return lambda q, k, v: jnp.sum(w * jnp.tanh(attn(q, k, v)))

        blockwise = lambda q, k, v: blockwise_causal_attention(q, k, v, block)
        g = jax.grad(loss(blockwise), argnums=(0, 1, 2))(q, k, v)
        g0 = jax.grad(loss(_dense), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(g, g0):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)

        # reverse over reverse, as the Hutchinson Jacobian term: d/d(q,k,v) |eps^T J|^2
        def jac_term(attn):
            def f(q, k, v):
                _, vjp = jax.vjp(attn, q, k, v)
                return sum(jnp.sum(t * t) for t in vjp(w))
            return f

        h = jax.grad(jac_term(blockwise), argnums=(0, 1, 2))(q, k, v)
        h0 = jax.grad(jac_term(_dense), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(h, h0):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_causal():
    """Changing the keys and values after position t leaves the outputs up to t unchanged."""
    q, k, v = _qkv(jnp.float32)
    t = 9
    k2, v2 = k.at[:, t + 1:].add(5.0), v.at[:, t + 1:].add(5.0)
    a = blockwise_causal_attention(q, k, v, 4)
    b = blockwise_causal_attention(q, k2, v2, 4)
    np.testing.assert_array_equal(a[:, :t + 1], b[:, :t + 1])
    assert not np.allclose(a[:, t + 1:], b[:, t + 1:])


def test_float32_and_bfloat16_match_dense():
    q, k, v = _qkv(jnp.float32)
    np.testing.assert_allclose(blockwise_causal_attention(q, k, v, 7), jax.nn.dot_product_attention(
        q, k, v, is_causal=True), rtol=0, atol=2e-6)
    qb, kb, vb = (t.astype(jnp.bfloat16) for t in (q, k, v))
    out = blockwise_causal_attention(qb, kb, vb, 8)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), _dense(q, k, v), rtol=0, atol=3e-2)


def test_block_uses_it():
    """The model's block f with attention_block = 6 equals f with dense attention (and its vjp)."""
    dense = DEQTransformer(get_preset("tiny", dropout=0.0), rngs=nnx.Rngs(0))
    blocked = DEQTransformer(get_preset("tiny", dropout=0.0, attention_block=6), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 256)
    x = dense.inject(tokens, deterministic=True)
    (f0, p0), (f1, p1) = dense.split_block(), blocked.split_block()
    z = jax.random.normal(jax.random.key(2), x["inj"].shape)
    np.testing.assert_allclose(f1(p1, z, x), f0(p0, z, x), rtol=0, atol=2e-5)
    g0 = jax.grad(lambda p, z: jnp.sum(jnp.sin(f0(p, z, x))), argnums=(0, 1))(p0, z)
    g1 = jax.grad(lambda p, z: jnp.sum(jnp.sin(f1(p, z, x))), argnums=(0, 1))(p1, z)
    assert max_rel_err(g1, g0) <= 2e-5


def test_sharded_deq_step_equals_single_device_dense():
    """A DEQ step (loss, z*, gradients) with blockwise attention (blocks of 24: the gathered
    sequence of 64 is padded) on a (2, 1, 4) mesh equals the single-device dense step."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    tokens = jax.random.randint(jax.random.key(1), (8, 64), 0, 256)
    dense = DEQTransformer(get_preset("tiny", n_heads=8), rngs=nnx.Rngs(0))
    blocked = DEQTransformer(get_preset("tiny", n_heads=8, attention_block=24), rngs=nnx.Rngs(0))
    cfg = deq_cfg("broyden")
    loss0, grads0, aux0 = reference_step(dense, tokens, cfg)
    (loss, grads, aux), _, _ = sharded_step(blocked, tokens, cfg, (2, 1, 4))
    assert abs(float(loss) - float(loss0)) / abs(float(loss0)) <= 1e-5
    assert max_rel_err(aux["z"], aux0["z"]) <= 1e-5
    assert max_rel_err(grads, grads0) <= 5e-5


def test_config_rejects_negative_block():
    with pytest.raises(ValueError, match="model.attention_block must be an integer >= 0"):
        get_preset("tiny", attention_block=-1)


def _jac_term_temp_bytes(seq: int, block: int) -> int:
    """Temporary bytes of the compiled gradient of a Hutchinson-style |eps^T J|^2 through attention."""
    attn = ((lambda q, k, v: blockwise_causal_attention(q, k, v, block)) if block
            else (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)))

    def jac_term(q, k, v):
        _, vjp = jax.vjp(attn, q, k, v)
        return sum(jnp.sum(t * t) for t in vjp(jnp.ones_like(q)))

    arg = jax.ShapeDtypeStruct((1, seq, 2, 32), jnp.float32)
    compiled = jax.jit(jax.grad(jac_term, argnums=(0, 1, 2))).lower(arg, arg, arg).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_grows_linearly_with_the_sequence():
    """Twice the sequence, at most ~twice the temporaries (dense: four times), even through the
    second-order gradient the Jacobian term takes; and far less than dense at the longer one."""
    short, long = _jac_term_temp_bytes(2048, 256), _jac_term_temp_bytes(4096, 256)
    assert long <= 2.5 * short
    assert long * 8 <= _jac_term_temp_bytes(4096, 0)
