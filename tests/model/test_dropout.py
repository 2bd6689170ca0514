"""Variational dropout: one mask per forward pass, shared by every iteration."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deqdist.model import Collectives, DEQTransformer, SolveHooks, local_unroll
from model_presets import get_preset
from deqdist.solvers import SampleReduce

per_sample_norm = SampleReduce().norm


def _model(rate=0.3):
    return DEQTransformer(get_preset("tiny", dropout=rate, emb_dropout=0.1), rngs=nnx.Rngs(0))


def test_masks_drawn_once_and_shaped_like_z(tokens):
    model = _model()
    x = model.inject(tokens, deterministic=False, key=jax.random.key(0))
    assert set(x) == {"inj", "mask_attn", "mask_mlp"}
    for v in x.values():
        assert v.shape == (*tokens.shape, model.cfg.d_model)
    keep = 1 - model.cfg.dropout
    vals = np.unique(np.asarray(x["mask_attn"]))
    np.testing.assert_allclose(vals, [0.0, 1 / keep], rtol=1e-6)
    assert 0.6 < float(jnp.mean(x["mask_attn"] > 0)) < 0.8
    assert not np.array_equal(x["mask_attn"], x["mask_mlp"])
    # deterministic: no masks at all
    assert set(model.inject(tokens)) == {"inj"}


def test_block_is_deterministic_given_masks(tokens):
    """f has no randomness of its own: every iteration sees the same masks."""
    model = _model()
    x = model.inject(tokens, deterministic=False, key=jax.random.key(0))
    f, params = model.split_block()
    z = jax.random.normal(jax.random.key(1), x["inj"].shape)
    np.testing.assert_array_equal(f(params, z, x, Collectives()), f(params, z, x, Collectives()))
    assert not any(isinstance(v, nnx.RngState) for _, v in nnx.to_flat_state(nnx.state(model)))


def test_every_iteration_uses_the_same_masks(tokens):
    """Record the masks every application of f receives in a forward pass."""
    model = _model()
    seen = []

    def recording_unroll(f, params, x, z0, n):
        z = z0
        for _ in range(n):  # python loop: one trace per application
            seen.append((x["mask_attn"], x["mask_mlp"]))
            z_prev, z = z, f(params, z, x, comms=Collectives())
        return z, per_sample_norm(z - z_prev) / per_sample_norm(z)

    _, aux = model(tokens, SolveHooks(mode="explicit", n_unroll=25, unroll=recording_unroll),
                   deterministic=False, key=jax.random.key(3))
    assert len(seen) == 25
    for m_attn, m_mlp in seen[1:]:
        assert m_attn is seen[0][0] and m_mlp is seen[0][1]
    # with fixed masks there is a fixed point: the unrolled iteration converges
    assert float(aux["rel_residual"].max()) < 1e-4


def test_dropout_key_controls_masks(tokens):
    model = _model()
    run = lambda k: model(tokens, SolveHooks(mode="explicit", n_unroll=4), deterministic=False, key=k)[0]
    np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
    assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))
    det = model(tokens, SolveHooks(mode="explicit", n_unroll=4))[0]
    assert not np.allclose(det, run(jax.random.key(1)))


def test_local_unroll_matches_python_loop(tokens):
    model = _model(0.0)
    x = model.inject(tokens)
    f, params = model.split_block()
    z0 = model.z0(tokens)
    z, rel = local_unroll(f, params, x, z0, 3)
    zz = z0
    for _ in range(3):
        zp, zz = zz, f(params, zz, x, Collectives())
    np.testing.assert_allclose(z, zz, atol=1e-6)
    np.testing.assert_allclose(rel, per_sample_norm(zz - zp) / per_sample_norm(zz), rtol=1e-5)
