"""Reversible mode (deqdist/reversible.py): the backward undoes the coupled iteration exactly, so its
gradient equals autodiff of that iteration unrolled; its rounding is bounded; bad settings are refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqdist.config import ConfigError, load_config
from deqdist.deq import DEQConfig, backward_sink, deq
from deqdist.reversible import ReversibleConfig, max_span
from maps import tanh_map


def _setup(seed, dtype, B=3, S=4, d=8, radius=0.9):
    params, f = tanh_map(seed, d, radius, dtype=dtype)
    x = jax.random.normal(jax.random.PRNGKey(seed + 7), (B, S, d), dtype)
    c = jax.random.normal(jax.random.PRNGKey(seed + 9), (B, S, d), dtype)
    return params, f, x, c


def _unrolled(f, p, x, z0, rcfg: ReversibleConfig, nstep):
    """The coupled iteration by plain autodiff, sample i taking nstep[i] steps."""
    b = rcfg.b
    y = z = z0
    for k in range(int(np.max(nstep))):
        on = (k < nstep).reshape((-1,) + (1,) * (z.ndim - 1))
        y1 = (1 - b) * y + b * f(p, z, x)
        z1 = (1 - b) * z + b * f(p, y1, x)
        y, z = jnp.where(on, y1, y), jnp.where(on, z1, z)
    return z


def _grads_both(rcfg: ReversibleConfig, seed=0, dtype=jnp.float64, **kw):
    params, f, x, c = _setup(seed, dtype, **kw)
    cfg = DEQConfig(grad="reversible", reversible=rcfg)
    z0 = jnp.zeros_like(x)

    def loss_rev(p, x, sink):
        z, stats = deq(f, p, x, z0, cfg, bwd_sink=sink)
        return jnp.sum(c * z) + 0.5 * jnp.sum(z ** 2), stats

    sink = backward_sink(x.shape[0])
    (gp, gx, back), stats = jax.jit(jax.grad(loss_rev, argnums=(0, 1, 2), has_aux=True))(params, x, sink)
    nstep = np.asarray(stats.nstep)

    def loss_ref(p, x):
        z = _unrolled(f, p, x, z0, rcfg, nstep)
        return jnp.sum(c * z) + 0.5 * jnp.sum(z ** 2)

    ref = jax.jit(jax.grad(loss_ref, argnums=(0, 1)))(params, x)
    return (gp, gx), ref, stats, back


def _max_rel(a, b):
    return max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("rcfg", [
    ReversibleConfig(steps=6, b=0.5, checkpoint_every=0),  # one span: final state only
    ReversibleConfig(steps=20, b=0.5, checkpoint_every=6),  # reversal restarted at stored pairs
    ReversibleConfig(steps=7, b=0.8, checkpoint_every=3),  # last span shorter than the others
], ids=["fixed", "checkpointed", "b0.8"])
def test_f64_gradient_equals_unrolled_autodiff(rcfg):
    with jax.enable_x64(True):
        got, ref, stats, back = _grads_both(rcfg)
        assert np.all(np.asarray(stats.nstep) == rcfg.steps)
        assert _max_rel(got, ref) < 1e-9
        assert float(jnp.max(back["recon_error"])) < 1e-10
        np.testing.assert_array_equal(back["nstep"], rcfg.steps)


def test_f64_residual_stop_is_per_sample_and_its_gradient_exact():
    with jax.enable_x64(True):
        # Samples of different scale converge after different numbers of steps.
        rcfg = ReversibleConfig(steps=40, b=0.5, tol=1e-4, checkpoint_every=5)
        got, ref, stats, back = _grads_both(rcfg, radius=0.6)
        nstep = np.asarray(stats.nstep)
        assert np.all(np.asarray(stats.converged)) and np.all(np.asarray(stats.rel_residual) <= 1e-4)
        assert nstep.max() < 40 and len(set(nstep.tolist())) > 1, nstep
        np.testing.assert_array_equal(back["nstep"], nstep)
        np.testing.assert_array_equal(back["loop_iters"], nstep.max())
        assert _max_rel(got, ref) < 1e-9




@pytest.mark.parametrize("every, bound", [(4, 1e-5), (0, None)])
def test_f32_reversal_error_is_bounded_by_checkpoints(every, bound):
    rcfg = ReversibleConfig(steps=16, b=0.5, checkpoint_every=every)
    got, ref, _, back = _grads_both(rcfg, dtype=jnp.float32, radius=0.9)
    err = float(jnp.max(back["recon_error"]))
    if bound is None:  # 16 float32 steps undone in one go: the error grows well past the checkpointed one
        assert err > 1e-5
    else:
        assert err < bound and _max_rel(got, ref) < 1e-4, (err, _max_rel(got, ref))


def test_stats_and_output():
    params, f, x, _ = _setup(0, jnp.float32)
    rcfg = ReversibleConfig(steps=5, b=0.5)
    z, st = deq(f, params, x, jnp.zeros_like(x), DEQConfig(grad="reversible", reversible=rcfg))
    ref = _unrolled(f, params, x, jnp.zeros_like(x), rcfg, np.full(x.shape[0], 5))
    np.testing.assert_allclose(z, ref, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(st.nstep) == 5) and np.all(np.asarray(st.loop_iters) == 5)
    assert not np.any(np.asarray(st.converged)) and not np.any(np.asarray(st.diverged))
    assert np.all(np.asarray(st.rel_residual) > 0)


def test_max_span():
    assert max_span(jnp.float32, 0.5) == 6 and max_span(jnp.float32, 0.8) == 3
    assert max_span(jnp.bfloat16, 0.5) == 0 and max_span(jnp.float16, 0.5) == 0
    assert max_span(jnp.float64, 0.5) > 20


@pytest.mark.parametrize("overrides, message", [
    (["solver.grad=reversible", "model.dtype=bfloat16"],
     "cannot undo even one step exactly in bfloat16 (model.dtype); set model.dtype=float32"),
    (["solver.grad=reversible", "model.state_dtype=bfloat16"], "set model.state_dtype=float32"),
    (["solver.grad=reversible", "solver.reversible.steps=8", "solver.reversible.checkpoint_every=0"],
     "8 float32 steps between stored states at b=0.5 cannot be undone exactly (at most 6); "
     "set solver.reversible.checkpoint_every=6 or lower"),
    (["solver.grad=reversible", "solver.reversible.b=0.8"], "(at most 3)"),
    (["solver.grad=reversible", "solver.reversible.b=1.0"], "solver.reversible.b must be in (0, 1)"),
    (["solver.grad=reversible", "solver.reversible.steps=0"], "solver.reversible.steps must be >= 1"),
    (["solver.grad=reversible", "solver.reversible.tol=0"], "solver.reversible.tol must be > 0 or null"),
    (["solver.grad=reversible", "solver.reversible.checkpoint_every=-1"], "checkpoint_every must be >= 0"),
    (["solver.reversible.stepz=3"], "did you mean 'steps'"),
])
def test_config_refuses_inexact_or_bad_settings(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_config_accepts_reversible_settings():
    cfg = load_config(None, ["solver.grad=reversible", "solver.reversible.steps=8", "solver.reversible.tol=1e-3",
                             "solver.reversible.b=0.5", "solver.reversible.checkpoint_every=4"])
    assert cfg.solver.reversible == ReversibleConfig(steps=8, b=0.5, tol=1e-3, checkpoint_every=4)
    # bf16 compute is fine for the other modes: the settings only bind in reversible mode.
    load_config(None, ["model.dtype=bfloat16", "solver.reversible.checkpoint_every=0", "solver.reversible.steps=12"])
