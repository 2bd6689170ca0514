"""The Hutchinson Jacobian estimate at z*, on request."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deqdist.deq import DEQConfig
from deqdist.model import Collectives, DEQTransformer, SolveHooks
from model_presets import get_preset
from deqdist.solvers import SolverConfig


def test_jac_reg_estimate_matches_exact():
    model = DEQTransformer(get_preset("tiny"), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 4), 0, 256)
    cfg = DEQConfig(fwd=SolverConfig(tol=1e-6, max_iter=60))
    graphdef, state = nnx.split(model)

    def one_probe(key):
        z, aux = nnx.merge(graphdef, state).features(tokens, SolveHooks(deq_cfg=cfg, jac_samples=1), key=key)
        return z, aux["jac_fro2"], aux["jac_loss"]

    z, fro2, jac_loss = jax.jit(jax.vmap(one_probe))(jax.random.split(jax.random.key(0), 128))
    z = z[0]
    assert fro2.shape == (128, 1)
    np.testing.assert_allclose(jac_loss, fro2[:, 0] / z[0].size, rtol=1e-5)
    x = model.inject(tokens)
    f, params = model.split_block()
    jac = jax.jit(jax.jacfwd(lambda zz: f(params, zz, x, Collectives())))(z)
    exact = float(jnp.sum(jac**2))
    np.testing.assert_allclose(float(fro2.mean()), exact, rtol=0.1)


def test_jac_reg_is_differentiable(tiny_model, tokens):
    def loss(m):
        # explicit mode keeps the compile cheap; the estimate is taken at the final z either way
        _, aux = m(tokens, SolveHooks(mode="explicit", n_unroll=3, jac_samples=1), key=jax.random.key(0))
        return aux["jac_loss"]

    grads = nnx.jit(nnx.grad(loss))(tiny_model)
    assert float(jnp.abs(grads.block.w1.get_value()).max()) > 0
    assert float(jnp.abs(grads.block.ln_out.scale.get_value()).max()) > 0
