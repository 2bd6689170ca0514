"""Weight normalisation: computed once per forward pass, outside the solve."""
import jax.numpy as jnp
import numpy as np
from flax import nnx

import deqdist.model.block as block_mod
from deqdist.model import WEIGHT_NORM_AXES, DEQTransformer, SolveHooks, local_unroll
from model_presets import get_preset


def test_identity_at_init(tokens):
    """g = ||V|| at init, so the weight-normalised model equals the plain one (same seed)."""
    plain = DEQTransformer(get_preset("tiny"), rngs=nnx.Rngs(0))
    wn = DEQTransformer(get_preset("tiny", weight_norm=True), rngs=nnx.Rngs(0))
    run = nnx.jit(lambda m, t: m(t, SolveHooks(mode="explicit", n_unroll=3))[0])
    a = run(plain, tokens)
    b = run(wn, tokens)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_hook_receives_normalised_params_and_normalises_once(tokens, monkeypatch):
    model = DEQTransformer(get_preset("tiny", weight_norm=True), rngs=nnx.Rngs(0))
    # make V differ from the normalised weight
    for name in WEIGHT_NORM_AXES:
        var = getattr(model.block, name)
        var.set_value(3.0 * var.get_value())

    calls = []
    real = block_mod.weight_normalise
    monkeypatch.setattr(block_mod, "weight_normalise", lambda p: calls.append(1) or real(p))
    received = {}

    def spy_unroll(f, params, x, z0, n):
        received["params"] = params
        return local_unroll(f, params, x, z0, n)

    model(tokens, SolveHooks(mode="explicit", n_unroll=8, unroll=spy_unroll))
    assert len(calls) == 1  # once per forward pass, not per application of f
    p = received["params"]
    for name, (axes, _) in WEIGHT_NORM_AXES.items():
        w = p[name].get_value()
        g = p["wn"][name].get_value()
        np.testing.assert_allclose(jnp.sqrt(jnp.sum(w * w, axis=axes)), g, rtol=1e-5)
        v = getattr(model.block, name).get_value()
        assert not np.allclose(w, v)


def test_weight_norm_gradients_reach_gains(tokens):
    model = DEQTransformer(get_preset("tiny", weight_norm=True), rngs=nnx.Rngs(0))

    def loss(m):
        logits, _ = m(tokens, SolveHooks(mode="explicit", n_unroll=3))
        return jnp.mean(logits ** 2)

    grads = nnx.jit(nnx.grad(loss))(model)
    for name in WEIGHT_NORM_AXES:
        assert float(jnp.abs(grads.block.wn[name].get_value()).max()) > 0, name
