"""The reversible mode on the DEQ-Transformer: in float64 (every op of f in float64) its gradient is
autodiff of the same coupled iteration unrolled, to 1e-9; the model's hooks and stats carry it."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deqdist.deq import DEQConfig, backward_sink
from deqdist.model import DEQTransformer, SolveHooks
from model_presets import get_preset
from deqdist.model.collectives import LOCAL
from deqdist.reversible import ReversibleConfig

RCFG = ReversibleConfig(steps=7, b=0.5, checkpoint_every=3)


def _coupled_unroll(f, params, x, z0, n):
    """Explicit-mode hook: the coupled iteration, differentiated by ordinary backprop."""
    f, b = functools.partial(f, comms=LOCAL), RCFG.b
    y = z = z0
    for _ in range(n):
        y = (1 - b) * y + b * f(params, z, x)
        z = (1 - b) * z + b * f(params, y, x)
    return z, jnp.zeros(z.shape[0], z.dtype)


def _grads(model, tokens, hooks, c):
    def loss(m):
        z, _ = m.features(tokens, hooks)
        return jnp.sum(c * z)

    return nnx.to_flat_state(nnx.jit(nnx.grad(loss))(model))


def test_f64_model_gradient_equals_unrolled_coupled_iteration():
    with jax.enable_x64(True):
        # Blockwise attention: jax.nn.dot_product_attention (the dense path) takes its softmax in
        # float32 even for float64 inputs; the blockwise path keeps float64 throughout.
        cfg = get_preset("tiny", d_model=32, n_heads=2, d_mlp=64, dtype="float64", param_dtype="float64",
                         state_dtype="float64", attention_block=8)
        model = DEQTransformer(cfg, rngs=nnx.Rngs(0))
        tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
        f, params = model.split_block()
        x = model.inject(tokens)
        jaxpr = str(jax.make_jaxpr(lambda z: f(params, z, x, comms=LOCAL))(model.z0(tokens)))
        assert "f64" in jaxpr and "f32" not in jaxpr and "bf16" not in jaxpr
        c = jax.random.normal(jax.random.key(2), (2, 16, 32), jnp.float64)
        rev = SolveHooks(deq_cfg=DEQConfig(grad="reversible", reversible=RCFG))
        ref = SolveHooks(mode="explicit", n_unroll=RCFG.steps, unroll=_coupled_unroll)
        g_rev, g_ref = dict(_grads(model, tokens, rev, c)), dict(_grads(model, tokens, ref, c))
        assert g_rev.keys() == g_ref.keys()
        for name in g_rev:
            a, b = np.asarray(g_rev[name].get_value()), np.asarray(g_ref[name].get_value())
            assert a.dtype == np.float64
            assert np.max(np.abs(a - b)) <= 1e-9 * np.max(np.abs(b)), name


def test_backward_stats_through_sink(tiny_model, tokens):
    rcfg = ReversibleConfig(steps=5, b=0.5, checkpoint_every=2)

    def loss(m, sink):
        z, aux = m.features(tokens, SolveHooks(deq_cfg=DEQConfig(grad="reversible", reversible=rcfg), bwd_sink=sink))
        return jnp.sum(z ** 2), aux["fwd_stats"]

    sink = backward_sink(tokens.shape[0])
    back, stats = nnx.grad(loss, argnums=1, has_aux=True)(tiny_model, sink)
    np.testing.assert_array_equal(stats.nstep, 5)
    np.testing.assert_array_equal(back["nstep"], 5)
    np.testing.assert_array_equal(back["loop_iters"], 5)
    err = np.asarray(back["recon_error"])
    assert np.all(err > 0) and np.all(err < 1e-5), err  # float32: rounding, bounded by the stored pairs
