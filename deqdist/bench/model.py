"""`deqdist bench model`: the DEQ-Transformer against its explicit (unrolled) twin, one CPU.

Part 1: one training step (loss, gradients, AdamW update) of the `small` preset at
batch 8, seq 256: DEQ with Broyden forward and implicit-gradient Broyden backward vs
the weight-tied twin unrolled 12 and 24 times with ordinary backprop. Reports
compiled peak temporary memory (memory_analysis), median step time and the
forward/backward solver iterations.

Part 2: the `small` block at initialisation: f-evaluations and wall time of each
solver to relative residual 1e-3.

With `--run-dir RUN`: part 1 at the parameters of RUN's newest checkpoint (its
config, solver settings and a batch of its validation split) instead of at
initialisation, so memory, step time and iterations reflect a trained model;
the twins are unrolled model.n_unroll and twice that many times.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ..deq import DEQConfig, backward_sink
from ..model import LOCAL, SolveHooks, get_preset, lm_loss
from ..solvers import SolverConfig, solve
from .common import median_ms, table


def _train_step(graphdef, mode: str, deq_cfg: DEQConfig, n_unroll: int, tx):
    def loss_fn(state, sink, tokens):
        model = nnx.merge(graphdef, state)
        hooks = SolveHooks(mode=mode, deq_cfg=deq_cfg, n_unroll=n_unroll, bwd_sink=sink)
        logits, aux = model(tokens[:, :-1], hooks)
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
    tokens = jax.random.randint(jax.random.key(1), (batch, cfg.seq_len + 1), 0, cfg.vocab_size)
    s = SolverConfig(method="broyden", max_iter=30, tol=1e-3)
    title = f"{preset} preset at initialisation, batch {batch}, seq {cfg.seq_len}"
    return _compare(model, DEQConfig(fwd=s, bwd=s), (12, 24), tokens, repeats, title)


def _compare(model, deq_cfg: DEQConfig, unrolls: tuple[int, ...], tokens, repeats: int, title: str) -> str:
    """One training step of `model` as a DEQ and as its explicit twin unrolled `unrolls` times."""
    graphdef, state = nnx.split(model, nnx.Param)
    tx = optax.adamw(1e-4)
    rows, res = [], {}
    fwd, bwd = deq_cfg.fwd, deq_cfg.bwd
    runs = [(f"DEQ ({fwd.method} fwd + {deq_cfg.grad} {bwd.method} bwd)", "deq", 0)]
    runs += [(f"explicit twin x{n}", "explicit", n) for n in unrolls]
    for name, mode, n in runs:
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
    n = max(unrolls)
    mem_n, t_n = res[f"explicit{n}"]
    return (f"### training step: {title}, {jax.devices()[0].platform}\n\n"
            + table(["model", "peak temp MiB", "median step ms", "fwd iters", "bwd iters", "loss"], rows)
            + f"\n\nDEQ / twin x{n}: memory {mem_deq / mem_n:.2f}x (target <= 0.25x), "
              f"step time {t_deq / t_n:.2f}x (target <= 1.5x)\n")


def _trained(run_dir: str, batch: int | None, repeats: int) -> str:
    """The same comparison at a run's newest checkpoint, on a batch of its validation split."""
    import numpy as np

    from ..data import eval_iterator
    from ..train.loop import load_data, open_run
    from ..train.state import merge

    session, state, step = open_run(Path(run_dir), [])
    try:
        cfg = session.cfg
        model = merge(session.spec, jax.device_get(state["params"]))
        windows = next(iter(eval_iterator(load_data(cfg), cfg.data, "valid", max_batches=1)))
        tokens = np.concatenate([windows["inputs"], windows["targets"][:, -1:]], axis=1)
        if batch is not None:
            tokens = tokens[:batch]
        title = (f"{run_dir} at step {step} (checkpoint parameters), batch {tokens.shape[0]} of its "
                 f"validation split, seq {cfg.model.seq_len}")
        n = cfg.model.n_unroll
        return _compare(model, cfg.solver, (n, 2 * n), jnp.asarray(tokens), repeats, title)
    finally:
        session.close()


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


def run(preset: str = "small", batch: int | None = None, repeats: int = 5, run_dir: str | None = None) -> str:
    """At initialisation of `preset` (batch default 8), or at `run_dir`'s newest checkpoint
    (batch default: the run's global batch; the solver table is for presets only)."""
    if run_dir is not None:
        return _trained(run_dir, batch, repeats)
    batch = 8 if batch is None else batch
    return _steps(preset, batch, repeats) + "\n" + _solvers(preset, batch, repeats)
