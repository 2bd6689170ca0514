"""LayerNorm and rotary embeddings, against their definitions."""
import jax
import jax.numpy as jnp
import numpy as np

from deqdist.model import LayerNorm, rope
from deqdist.model.layers import rope_at


def test_layernorm_normalises_in_float32_and_keeps_the_dtype():
    x = jax.random.normal(jax.random.key(0), (2, 5, 16)) * 3.0 + 1.0
    ln = LayerNorm(16, eps=1e-5, scale_init=2.0)
    y = ln(x)
    ref = 2.0 * (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert ln(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_rope_scores_depend_on_distance_only():
    kq, kk = jax.random.split(jax.random.key(1))
    q = jax.random.normal(kq, (1, 1, 2, 8))
    k = jax.random.normal(kk, (1, 1, 2, 8))

    def score(pq, pk):
        return jnp.einsum("bshd,bshd->bh", rope_at(q, jnp.array([[pq]]), 10_000.0),
                          rope_at(k, jnp.array([[pk]]), 10_000.0))

    np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4)
    assert not np.allclose(score(7, 3), score(7, 5))


def test_rope_is_a_rotation_and_position_zero_is_the_identity():
    x = jax.random.normal(jax.random.key(2), (2, 6, 3, 8))
    y = rope(x, 10_000.0)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(y[:, 0], x[:, 0], rtol=1e-6)
    np.testing.assert_allclose(rope_at(x, jnp.arange(6)[None], 10_000.0), y)

