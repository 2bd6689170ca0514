import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deqdist.deq import DEQConfig, backward_sink, deq, deq_module, unroll
from deqdist.solvers import SolverConfig
from maps import tanh_map

METHODS = ["broyden", "anderson", "picard"]


def _cfg(method, tol, max_iter=400, **kw):
    s = SolverConfig(method=method, max_iter=max_iter, tol=tol, stop_mode="abs")
    return DEQConfig(fwd=s, bwd=s, **kw)


def _setup(seed, dtype, B=2, S=3, d=8, radius=0.6):
    params, f = tanh_map(seed, d, radius, dtype=dtype)
    x = jax.random.normal(jax.random.PRNGKey(seed + 7), (B, S, d), dtype)
    c = jax.random.normal(jax.random.PRNGKey(seed + 9), (B, S, d), dtype)
    return params, f, x, c


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_implicit_grad_matches_finite_differences_f64(method, seed):
    with jax.enable_x64(True):
        params, f, x, c = _setup(seed, jnp.float64)
        cfg = _cfg(method, 1e-13)

        def loss(p, x):
            z, _ = deq(f, p, x, jnp.zeros_like(x), cfg)
            return jnp.sum(c * z) + 0.5 * jnp.sum(z ** 2)

        gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        keys = jax.random.split(jax.random.PRNGKey(seed + 3), 4)
        vp = {k: jax.random.normal(kk, v.shape, jnp.float64) for (k, v), kk in zip(params.items(), keys)}
        vx = jax.random.normal(keys[3], x.shape, jnp.float64)
        eps = 1e-6
        lf = jax.jit(loss)
        shift = lambda s: ({k: params[k] + s * vp[k] for k in params}, x + s * vx)
        fd = (lf(*shift(eps)) - lf(*shift(-eps))) / (2 * eps)
        an = sum(jnp.vdot(gp[k], vp[k]) for k in params) + jnp.vdot(gx, vx)
        assert abs(float(fd - an)) / abs(float(an)) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_implicit_grad_matches_unrolled_autodiff(method):
    with jax.enable_x64(True):
        params, f, x, c = _setup(11, jnp.float64, radius=0.8)
        cfg = _cfg(method, 1e-12)

        def loss_deq(p, x):
            return jnp.sum(c * deq(f, p, x, jnp.zeros_like(x), cfg)[0])

        def loss_unrolled(p, x):
            z = jnp.zeros_like(x)
            for _ in range(150):
                z = f(p, z, x)
            return jnp.sum(c * z)

        g1 = jax.grad(loss_deq, argnums=(0, 1))(params, x)
        g2 = jax.grad(loss_unrolled, argnums=(0, 1))(params, x)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=1e-9)


def test_forward_solves_once_and_z0_gets_no_gradient():
    params, f, x, c = _setup(0, jnp.float32)
    calls = []

    def counted(p, z, x):
        calls.append(1)
        return f(p, z, x)

    cfg = _cfg("broyden", 1e-6)
    jax.jit(lambda p, x: deq(counted, p, x, jnp.zeros_like(x), cfg)[0]).lower(params, x)
    # One solve traces f twice: the first evaluation and the loop body.
    assert len(calls) == 2
    gz0 = jax.grad(lambda z0: jnp.sum(c * deq(f, params, x, z0, cfg)[0]))(jnp.ones_like(x))
    assert float(jnp.abs(gz0).max()) == 0.0


def test_backward_stats_come_back_through_the_sink_under_jit():
    params, f, x, c = _setup(0, jnp.float32)
    cfg = DEQConfig(fwd=SolverConfig(tol=1e-5), bwd=SolverConfig(tol=1e-5, max_iter=40))

    def loss(p, sink):
        z, st = deq(f, p, x, jnp.zeros_like(x), cfg, bwd_sink=sink)
        return jnp.sum(c * z), st

    (_, fwd), (gp, bwd) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, backward_sink(2))
    assert bool(fwd.converged.all()) and int(fwd.nstep.min()) > 0
    assert np.all(np.asarray(bwd["nstep"]) > 0) and np.all(np.asarray(bwd["converged"]) == 1)
    assert np.all(np.asarray(bwd["rel_residual"]) <= 1e-5)


@pytest.mark.parametrize("mode", ["phantom", "onestep"])
def test_approximate_gradients_point_the_same_way(mode):
    params, f, x, c = _setup(4, jnp.float32, radius=0.3)
    grads = {}
    for m in ["implicit", mode]:
        cfg = DEQConfig(fwd=SolverConfig(tol=1e-6, max_iter=60), grad=m, phantom_steps=8, phantom_damping=0.9)
        g = jax.grad(lambda p: jnp.sum(c * deq(f, p, x, jnp.zeros_like(x), cfg)[0]))(params)
        grads[m] = jnp.concatenate([v.ravel() for v in jax.tree.leaves(g)])
    a, b = grads["implicit"], grads[mode]
    assert float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))) > 0.9


class _Cell(nnx.Module):
    def __init__(self, d, rngs):
        self.lin = nnx.Linear(d, d, rngs=rngs, kernel_init=nnx.initializers.normal(0.3 / np.sqrt(d)))
        self.inj = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, z, x):
        return jnp.tanh(self.lin(z) + self.inj(x))


def test_nnx_module_as_deq_matches_unrolled_grads():
    cell = _Cell(8, nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))
    cfg = DEQConfig(fwd=SolverConfig(tol=1e-7, max_iter=80), bwd=SolverConfig(tol=1e-7, max_iter=80))

    def loss_deq(m):
        return jnp.sum(deq_module(m, x, jnp.zeros_like(x), cfg)[0] ** 2)

    def loss_unrolled(m):
        z = jnp.zeros_like(x)
        for _ in range(60):
            z = m(z, x)
        return jnp.sum(z ** 2)

    g1 = nnx.grad(loss_deq)(cell)
    g2 = nnx.grad(loss_unrolled)(cell)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


def test_unroll_is_n_applications_of_f_with_the_last_step_as_residual():
    params, f, x, _ = _setup(0, jnp.float32)
    z0 = jnp.zeros_like(x)
    z, rel = jax.jit(lambda p, x: unroll(f, p, x, z0, 4))(params, x)
    zs = [z0]
    for _ in range(4):
        zs.append(f(params, zs[-1], x))
    np.testing.assert_allclose(z, zs[-1], rtol=1e-6, atol=1e-6)
    norm = lambda a: np.linalg.norm(np.asarray(a).reshape(a.shape[0], -1), axis=1)
    np.testing.assert_allclose(rel, norm(zs[-1] - zs[-2]) / norm(zs[-1]), rtol=1e-5)
    with pytest.raises(ValueError, match="n_unroll must be >= 1"):
        unroll(f, params, x, z0, 0)
