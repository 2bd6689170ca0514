"""`deqdist bench model`: the DEQ-Transformer against its explicit (unrolled) twin, one CPU.

Part 1: one training step (loss, gradients, AdamW update) of the `small` preset at
batch 8, seq 256: DEQ with Broyden forward and implicit-gradient Broyden backward vs
the weight-tied twin unrolled 12 and 24 times with ordinary backprop. Reports
compiled peak temporary memory (memory_analysis), median step time and the
forward/backward solver iterations.

Part 2: the `small` block at initialisation: f-evaluations and wall time of each
solver to relative residual 1e-3.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ..deq import DEQConfig, backward_sink
from ..model import LOCAL, get_preset, lm_loss
from ..solvers import SolverConfig, solve
from .common import median_ms, table


def _train_step(graphdef, mode: str, deq_cfg: DEQConfig, n_unroll: int, tx):
    def loss_fn(state, sink, tokens):
        model = nnx.merge(graphdef, state)
        logits, aux = model(tokens[:, :-1], mode=mode, deq_cfg=deq_cfg, n_unroll=n_unroll, bwd_sink=sink)
        return lm_loss(logits, tokens[:, 1:]), aux

    def step(state, opt_state, tokens):
        sink = backward_sink(tokens.shape[0])
        (loss, aux), (grads, bwd) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(state, sink, tokens)
        updates, opt_state = tx.update(grads, opt_state, state)
        fwd = aux.get("fwd_stats")
        iters = (jnp.max(fwd.nstep) if fwd is not None else n_unroll, jnp.max(bwd["nstep"]))
        return optax.apply_updates(state, updates), opt_state, loss, iters

    return jax.jit(step, donate_argnums=(0, 1))


def _steps(preset: str, batch: int, repeats: int) -> str:
    cfg = get_preset(preset, dropout=0.0)
    model = cfg.create(nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    tokens = jax.random.randint(jax.random.key(1), (batch, cfg.seq_len + 1), 0, cfg.vocab_size)
    tx = optax.adamw(1e-4)
    s = SolverConfig(method="broyden", max_iter=30, tol=1e-3)
    deq_cfg = DEQConfig(fwd=s, bwd=s)
    rows, res = [], {}
    for name, mode, n in [("DEQ (Broyden fwd + implicit Broyden bwd)", "deq", 0),
                          ("explicit twin x12", "explicit", 12), ("explicit twin x24", "explicit", 24)]:
        step = _train_step(graphdef, mode, deq_cfg, n, tx)
        st = jax.tree.map(jnp.copy, state)
        opt = tx.init(st)
        mem = step.lower(st, opt, tokens).compile().memory_analysis().temp_size_in_bytes
        holder = {"s": st, "o": opt}

        def run(tokens):
            holder["s"], holder["o"], loss, iters = step(holder["s"], holder["o"], tokens)
            return loss, iters

        ms, (loss, iters) = median_ms(run, tokens, repeats=repeats)
        res[mode + str(n)] = (mem, ms)
        rows.append([name, f"{mem / 2**20:.1f}", f"{ms:.0f}", int(iters[0]),
                     int(iters[1]) if mode == "deq" else "-", f"{float(loss):.3f}"])
    mem_deq, t_deq = res["deq0"]
    mem24, t24 = res["explicit24"]
    return (f"### training step: {preset} preset, batch {batch}, seq {cfg.seq_len}, {jax.devices()[0].platform}\n\n"
            + table(["model", "peak temp MiB", "median step ms", "fwd iters", "bwd iters", "loss"], rows)
            + f"\n\nDEQ / twin x24: memory {mem_deq / mem24:.2f}x (target <= 0.25x), "
              f"step time {t_deq / t24:.2f}x (target <= 1.5x)\n")


def _solvers(preset: str, batch: int, repeats: int) -> str:
    cfg = get_preset(preset, dropout=0.0)
    model = cfg.create(nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, cfg.seq_len), 0, cfg.vocab_size)
    x = model.inject(tokens)
    f, params = model.split_block()
    fz = lambda z: f(params, z, x, comms=LOCAL)
    z0 = model.z0(tokens)
    rows = []
    for method in ("picard", "anderson", "broyden"):
        sc = SolverConfig(method=method, max_iter=200, tol=1e-3)
        ms, (_, st) = median_ms(jax.jit(lambda z0, sc=sc: solve(fz, z0, sc)), z0, repeats=repeats)
        rows.append([method, int(st.nstep.max()) + 1, f"{float(st.rel_residual.max()):.1e}",
                     bool(st.converged.all()), f"{ms:.0f}"])
    return (f"### {preset} block at initialisation, batch {batch}: solve to rel. residual 1e-3\n\n"
            + table(["solver", "f-evals", "max rel. residual", "converged", "median ms"], rows) + "\n")


def run(preset: str = "small", batch: int = 8, repeats: int = 5) -> str:
    return _steps(preset, batch, repeats) + "\n" + _solvers(preset, batch, repeats)
