"""A tiny DEQ-Transformer and the trainer's own gradient step (deqdist.train.step.Steps.gradients)
on one device or a mesh, shared by the parallel tests and the multi-host worker."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from deqdist import presets
from deqdist.config import Config, load_config
from deqdist.deq import DEQConfig
from deqdist.model import DEQTransformer
from deqdist.solvers import SolverConfig
from deqdist.train.step import Steps

# 8 heads and d_mlp 256 so that every 8-device mesh, (1, 1, 8) included, divides them.
MODEL = ["model.n_heads=8", "model.dropout=0", "model.emb_dropout=0"]


def deq_cfg(method: str, iters: int = 12) -> DEQConfig:
    # A fixed number of iterations (tol unreachable) makes sharded and single-device runs
    # take the same steps, so they can be compared tightly.
    s = SolverConfig(method=method, max_iter=iters, tol=1e-12)
    return DEQConfig(fwd=s, bwd=s)


def config(cfg: DEQConfig, sizes=(1, 1, 1), *, lockstep: str = "sample", batch: int = 8, seq: int = 64,
           dcn: int = 1) -> Config:
    """The tiny preset with `cfg`'s solvers on a (data, fsdp, tensor) mesh of `sizes`."""
    solver = [f"solver.{d}.{k}={getattr(getattr(cfg, d), k)}" for d in ("fwd", "bwd") for k in ("method", "max_iter", "tol")]
    if cfg.grad == "reversible":
        solver += [f"solver.reversible.{k}={'null' if v is None else v}"
                   for k, v in dataclasses.asdict(cfg.reversible).items()]
    data, fsdp, tensor = sizes
    return load_config(presets.path("tiny"), MODEL + solver + [
        f"solver.grad={cfg.grad}", f"model.seq_len={seq}", f"data.global_batch_size={batch}",
        f"parallel.data={data}", f"parallel.fsdp={fsdp}", f"parallel.tensor={tensor}",
        f"parallel.dcn_data={dcn}", f"parallel.lockstep={lockstep}"])


def model_and_tokens(batch: int = 8, seq: int = 64, seed: int = 0):
    model = DEQTransformer(load_config(presets.path("tiny"), MODEL).model, rngs=nnx.Rngs(seed))
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch, seq), 0, 256)
    return model, tokens


def params_and_batch(model, tokens):
    """The train state's parameter dict and a train batch (next-token targets, the last wrapping round)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param)), {"inputs": tokens, "targets": jnp.roll(tokens, -1, 1)}


def reference_step(model, tokens, cfg: DEQConfig):
    """Single-device loss, grads and aux (z* in aux["z"]), on the host (comparable with any mesh's)."""
    return jax.device_get(sharded_step(model, tokens, cfg, None)[0])


def sharded_step(model, tokens, cfg: DEQConfig, sizes: tuple[int, int, int] | None, run: bool = True,
                 lockstep: str = "sample"):
    """The same step on a (data, fsdp, tensor) mesh (None: one device): sharded params, batch and solve.

    Returns (outputs or None, the lowered step, the mesh).
    """
    batch, seq = tokens.shape
    steps = Steps.for_config(config(cfg, sizes or (1, 1, 1), lockstep=lockstep, batch=batch, seq=seq),
                             jax.devices()[:1] if sizes is None else None)
    params, batch = params_and_batch(model, tokens)
    params = jax.device_put(params, steps.spec.shardings["params"])
    batch = jax.device_put(batch, steps.batch_sharding)
    fn = steps.gradients()
    return (fn(params, batch) if run else None), fn.lower(params, batch), steps.spec.mesh


def max_rel_err(a, b) -> float:
    errs = [float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(errs)
