"""Implicit gradients of the DEQ model match the explicit twin unrolled to convergence."""
import jax
import numpy as np
import pytest
from flax import nnx

from deqdist.deq import DEQConfig, backward_sink
from deqdist.model import DEQTransformer, SolveHooks, lm_loss
from model_presets import get_preset
from deqdist.solvers import SolverConfig

TIGHT = DEQConfig(
    fwd=SolverConfig(method="broyden", max_iter=60, tol=1e-6),
    bwd=SolverConfig(method="broyden", max_iter=60, tol=1e-6),
    grad="implicit",
)


def _grads(model, tokens, hooks, **kw):
    def loss(m):
        logits, _ = m(tokens[:, :-1], hooks, **kw)
        return lm_loss(logits, tokens[:, 1:])

    return nnx.jit(nnx.grad(loss))(model)


def _flat(state):
    return {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(state)}


def test_implicit_grads_match_explicit_twin():
    model = DEQTransformer(get_preset("tiny", tie_embeddings=False), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 33), 0, 256)
    g_deq = _flat(_grads(model, tokens, SolveHooks(deq_cfg=TIGHT)))
    g_exp = _flat(_grads(model, tokens, SolveHooks(mode="explicit", n_unroll=60)))
    assert g_deq.keys() == g_exp.keys()
    for name in g_deq:
        a, b = np.asarray(g_deq[name]), np.asarray(g_exp[name])
        err = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert err < 1e-2, (name, err)


def test_every_parameter_gets_a_gradient():
    # untied head + weight norm + dropout: every kind of parameter, every path
    model = DEQTransformer(get_preset("tiny", tie_embeddings=False, weight_norm=True, dropout=0.1), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 33), 0, 256)
    cfg = DEQConfig(fwd=SolverConfig(max_iter=30, tol=1e-3), bwd=SolverConfig(max_iter=30, tol=1e-3))
    grads = _grads(model, tokens, SolveHooks(deq_cfg=cfg), deterministic=False, key=jax.random.key(2))
    for name, g in _flat(grads).items():
        assert np.all(np.isfinite(g)), name
        assert float(np.abs(g).max()) > 0, name


@pytest.mark.parametrize("mode", ["phantom", "onestep"])
def test_other_grad_modes_run(mode, tiny_model, tokens):
    cfg = DEQConfig(grad=mode)
    for name, g in _flat(_grads(tiny_model, tokens, SolveHooks(deq_cfg=cfg))).items():
        assert np.all(np.isfinite(g)), name


def test_backward_stats_through_sink(tiny_model, tokens):
    """The trainer's way to get backward solve stats: differentiate w.r.t. the sink."""
    graphdef, state = nnx.split(tiny_model)
    cfg = DEQConfig(fwd=SolverConfig(tol=1e-4), bwd=SolverConfig(tol=1e-4))

    def loss(state, sink):
        m = nnx.merge(graphdef, state)
        logits, aux = m(tokens[:, :-1], SolveHooks(deq_cfg=cfg, bwd_sink=sink))
        return lm_loss(logits, tokens[:, 1:]), aux

    (l, aux), (g_state, bwd) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        state, backward_sink(tokens.shape[0]))
    assert np.isfinite(float(l))
    assert bool((bwd["nstep"] >= 1).all()) and bool((bwd["converged"] > 0).all())
    assert float(bwd["rel_residual"].max()) <= 1e-4
    assert bool(aux["fwd_stats"].converged.all())
