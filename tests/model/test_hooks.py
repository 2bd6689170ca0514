"""SolveHooks: what the model's call takes besides its inputs; the local hooks are deq and unroll."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deqdist.deq import DEQConfig, deq, unroll
from deqdist.model import LOCAL, SolveHooks, local_solve, local_unroll
from deqdist.solvers import SolverConfig


@pytest.mark.parametrize("kwargs, needle", [
    (dict(mode="unrolled"), "mode must be 'deq' or 'explicit'"),
    (dict(mode="explicit"), "explicit mode needs n_unroll"),
    (dict(jac_samples=-1), "jac_samples must be >= 0"),
])
def test_bad_hooks_are_refused_when_built(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SolveHooks(**kwargs)


def test_defaults_are_an_unsharded_deq_solve_without_extras():
    hooks = SolveHooks()
    assert (hooks.mode, hooks.solve, hooks.unroll) == ("deq", local_solve, local_unroll)
    assert hooks.bwd_sink is None and hooks.jac_samples == 0 and hooks.deq_cfg == DEQConfig()


def test_local_hooks_are_deq_and_unroll_with_identity_collectives(tiny_model, tokens):
    x = tiny_model.inject(tokens)
    f, params = tiny_model.split_block()
    z0 = tiny_model.z0(tokens)
    cfg = DEQConfig(fwd=SolverConfig(max_iter=8, tol=1e-12))
    bare = lambda p, z, x: f(p, z, x, comms=LOCAL)
    z_hook, stats_hook = jax.jit(lambda p, x, z0: local_solve(f, p, x, z0, cfg))(params, x, z0)
    z_ref, stats_ref = jax.jit(lambda p, x, z0: deq(bare, p, x, z0, cfg))(params, x, z0)
    np.testing.assert_array_equal(z_hook, z_ref)
    np.testing.assert_array_equal(stats_hook.nstep, stats_ref.nstep)
    hooked = jax.jit(lambda p, x, z0: local_unroll(f, p, x, z0, 3))(params, x, z0)
    for a, b in zip(hooked, jax.jit(lambda p, x, z0: unroll(bare, p, x, z0, 3))(params, x, z0)):
        np.testing.assert_array_equal(a, b)


def test_jacobian_term_only_when_asked_and_needs_a_key(tiny_model, tokens):
    plain = SolveHooks(mode="explicit", n_unroll=2)
    _, aux = nnx.jit(lambda m, t: m.features(t, plain))(tiny_model, tokens)
    assert "jac_loss" not in aux and "fwd_stats" not in aux
    with_jac = SolveHooks(mode="explicit", n_unroll=2, jac_samples=2)
    _, aux = nnx.jit(lambda m, t: m.features(t, with_jac, key=jax.random.key(0)))(tiny_model, tokens)
    assert aux["jac_fro2"].shape == (tokens.shape[0],) and jnp.isfinite(aux["jac_loss"])
    with pytest.raises(ValueError, match="needs a PRNG key"):
        tiny_model.features(tokens, SolveHooks(mode="explicit", n_unroll=2, jac_samples=1))


def test_the_call_is_the_head_of_features(tiny_model, tokens):
    hooks = SolveHooks(mode="explicit", n_unroll=3)
    logits, aux = nnx.jit(lambda m, t: m(t, hooks))(tiny_model, tokens)
    z, aux_f = nnx.jit(lambda m, t: m.features(t, hooks))(tiny_model, tokens)
    np.testing.assert_allclose(logits, nnx.jit(lambda m, z: m.head(z))(tiny_model, z), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(aux["rel_residual"], aux_f["rel_residual"])
