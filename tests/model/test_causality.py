"""Changing tokens t+1.. does not change logits at <= t (DEQ and explicit mode)."""
import jax
import numpy as np

from deqdist.deq import DEQConfig
from deqdist.model import SolveHooks
from deqdist.solvers import SolverConfig

T = 13


def _check(logits_a, logits_b):
    np.testing.assert_allclose(logits_a[:, : T + 1], logits_b[:, : T + 1], atol=1e-5, rtol=1e-5)
    assert not np.allclose(logits_a[:, T + 1 :], logits_b[:, T + 1 :], atol=1e-4)


def _tokens_pair(tokens, vocab):
    other = jax.random.randint(jax.random.key(9), tokens.shape, 0, vocab)
    return tokens, tokens.at[:, T + 1 :].set(other[:, T + 1 :])


def test_causal_explicit(tiny_model, tiny_cfg, tokens):
    a, b = _tokens_pair(tokens, tiny_cfg.vocab_size)
    run = lambda t: tiny_model(t, SolveHooks(mode="explicit", n_unroll=6))[0]
    _check(run(a), run(b))


def test_causal_deq(tiny_model, tiny_cfg, tokens, method="broyden"):
    # A tight tolerance: solver steps are per sample, so different future tokens
    # change the iterates of the whole sequence; at convergence the past must agree.
    cfg = DEQConfig(fwd=SolverConfig(method=method, max_iter=40, tol=1e-6),
                    bwd=SolverConfig(method=method, max_iter=40, tol=1e-6))
    a, b = _tokens_pair(tokens, tiny_cfg.vocab_size)
    run = lambda t: tiny_model(t, SolveHooks(deq_cfg=cfg))[0]
    _check(run(a), run(b))
