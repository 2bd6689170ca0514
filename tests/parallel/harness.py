"""A tiny DEQ-Transformer train-step harness shared by the parallel tests and the multi-host worker."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from deqdist.deq import DEQConfig
from deqdist.model import SolveHooks, get_preset, lm_loss, local_solve
from deqdist.parallel import ParallelConfig, batch_sharding, make_mesh, make_solve, param_shardings
from deqdist.solvers import SolverConfig

# 8 heads and d_mlp 256 so that every 8-device mesh, (1, 1, 8) included, divides them.
MODEL = dict(n_heads=8)


def deq_cfg(method: str, iters: int = 12) -> DEQConfig:
    # A fixed number of iterations (tol unreachable) makes sharded and single-device runs
    # take the same steps, so they can be compared tightly.
    s = SolverConfig(method=method, max_iter=iters, tol=1e-12)
    return DEQConfig(fwd=s, bwd=s)


def model_and_tokens(batch: int = 8, seq: int = 64, seed: int = 0):
    model = get_preset("tiny", **MODEL).create(nnx.Rngs(seed))
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch, seq), 0, 256)
    return model, tokens


def loss_fn(model, tokens, cfg: DEQConfig, solve):
    z, aux = model.features(tokens, SolveHooks(deq_cfg=cfg, solve=solve))
    aux["z"] = z
    return lm_loss(model.head(z)[:, :-1], tokens[:, 1:]), aux


def reference_step(model, tokens, cfg: DEQConfig):
    """Single-device loss, grads and z* (no mesh, local solve)."""
    (loss, aux), grads = jax.jit(lambda m, t: nnx.value_and_grad(loss_fn, has_aux=True)(m, t, cfg, local_solve))(
        model, tokens)
    return loss, grads, aux


def sharded_step(model, tokens, cfg: DEQConfig, sizes: tuple[int, int, int], run: bool = True,
                 lockstep: str = "sample"):
    """The same step on a (data, fsdp, tensor) mesh: sharded params, batch and solve.

    Returns (outputs or None, the lowered step, the mesh).
    """
    pc = ParallelConfig(*sizes, lockstep=lockstep)
    mesh = make_mesh(pc)
    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, mesh, pc)
    solve = make_solve(mesh, pc)

    def step(state, tokens):
        m = nnx.merge(graphdef, state)
        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m, tokens, cfg, solve)
        return loss, grads, aux

    with jax.set_mesh(mesh):
        state = jax.device_put(state, shardings)
        tokens = jax.device_put(tokens, batch_sharding(mesh, pc))
        jitted = jax.jit(step, in_shardings=(shardings, batch_sharding(mesh, pc)))
        return jitted(state, tokens) if run else None, jitted.lower(state, tokens), mesh


def max_rel_err(a, b) -> float:
    errs = [float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(errs)
