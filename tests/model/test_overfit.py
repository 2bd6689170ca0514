"""A tiny DEQ model overfits one batch."""
import time

import jax
import optax
from flax import nnx

from deqdist.deq import DEQConfig
from deqdist.model import DEQTransformer, SolveHooks, lm_loss
from model_presets import get_preset
from deqdist.solvers import SolverConfig


def test_tiny_deq_overfits_one_batch():
    model = DEQTransformer(get_preset("tiny", dropout=0.0), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    cfg = DEQConfig(fwd=SolverConfig(method="broyden", max_iter=30, tol=1e-3),
                    bwd=SolverConfig(method="broyden", max_iter=30, tol=1e-3))
    tokens = jax.random.randint(jax.random.key(1), (4, 65), 0, 256)

    @nnx.jit
    def step(model, opt, tokens):
        def loss_fn(m):
            logits, aux = m(tokens[:, :-1], SolveHooks(deq_cfg=cfg))
            return lm_loss(logits, tokens[:, 1:]), aux

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss, aux["fwd_stats"].nstep.max()

    t0 = time.perf_counter()
    losses, nsteps = [], []
    for _ in range(50):
        loss, nstep = step(model, opt, tokens)
        losses.append(float(loss))
        nsteps.append(int(nstep))
    elapsed = time.perf_counter() - t0
    assert losses[0] > 5.0  # ~ln 256 at init
    assert losses[-1] < 0.5 * losses[0], losses
    assert elapsed < 60, elapsed
    assert max(nsteps) <= 30
