"""`deqdist bench model`: the DEQ-Transformer against its explicit (unrolled) twin, one CPU.

Part 1: one training step (the trainer's own compiled step: loss, gradients, guarded
AdamW update) of the `small` preset at batch 8: DEQ with Broyden forward and
implicit-gradient Broyden backward vs
the weight-tied twin unrolled 12 and 24 times with ordinary backprop. Reports
compiled peak temporary memory (memory_analysis), median step time and the
forward/backward solver iterations.

Part 2: the `small` block at initialisation: f-evaluations and wall time of each
solver to relative residual 1e-3.

With `--run-dir RUN`: part 1 from RUN's newest checkpoint (parameters, optimizer state, its
config, solver settings and a batch of its validation split) instead of at
initialisation, so memory, step time and iterations reflect a trained model;
the twins are unrolled train.n_unroll and twice that many times.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from .. import presets
from ..config import Config, load_config
from ..model import LOCAL, DEQTransformer
from ..solvers import SolverConfig, solve
from ..train.state import init_state
from ..train.step import Steps
from .common import median_ms, table

SOLVER = ["solver.fwd.method=broyden", "solver.fwd.max_iter=30", "solver.fwd.tol=1e-3", "solver.bwd.method=broyden",
          "solver.bwd.max_iter=30", "solver.bwd.tol=1e-3", "solver.grad=implicit"]


def _one_device(batch: int) -> list[str]:
    return [f"data.global_batch_size={batch}", "parallel.data=1", "parallel.fsdp=1", "parallel.tensor=1",
            "model.dropout=0", "model.emb_dropout=0"]


def _steps(preset: str, batch: int, repeats: int) -> str:
    load = lambda extra: load_config(presets.path(preset), _one_device(batch) + SOLVER + extra)
    cfg = load([])
    state = init_state(cfg, Steps.for_config(cfg, jax.devices()[:1]).spec)
    tokens = jax.random.randint(jax.random.key(1), (batch, cfg.model.seq_len + 1), 0, cfg.model.vocab_size)
    title = f"{preset} preset at initialisation, batch {batch}, seq {cfg.model.seq_len}"
    return _compare(load, state, (12, 24), tokens, repeats, title)


def _compare(load: Callable[[list[str]], Config], state, unrolls: tuple[int, ...], tokens, repeats: int,
             title: str) -> str:
    """One train step (the trainer's, deqdist.train.step) from `state` as a DEQ and as its explicit twin
    unrolled `unrolls` times; `load(overrides)` is the config with extra overrides."""
    rows, res = [], {}
    cfg = load([])
    runs = [(f"DEQ ({cfg.solver.fwd.method} fwd + {cfg.solver.grad} {cfg.solver.bwd.method} bwd)", "deq", 0)]
    runs += [(f"explicit twin x{n}", "explicit", n) for n in unrolls]
    for name, mode, n in runs:
        steps = Steps.for_config(load([f"train.n_unroll={n}"] if n else []), jax.devices()[:1])
        step = steps.variant(mode, False)
        batch = {"inputs": jax.device_put(tokens[:, :-1], steps.batch_sharding),
                 "targets": jax.device_put(tokens[:, 1:], steps.batch_sharding)}
        holder = {"state": jax.device_put(jax.tree.map(jnp.copy, state), steps.spec.shardings)}
        mem = step.lower(holder["state"], batch).compile().memory_analysis().temp_size_in_bytes

        def run(batch):
            holder["state"], metrics = step(holder["state"], batch)
            return metrics

        ms, metrics = median_ms(run, batch, repeats=repeats)
        res[mode + str(n)] = (mem, ms)
        deq = mode == "deq"
        rows.append([name, f"{mem / 2**20:.1f}", f"{ms:.0f}", int(metrics["fwd_iters_max"]) if deq else n,
                     int(metrics["bwd_iters_max"]) if deq else "-", f"{float(metrics['loss']):.3f}"])
    mem_deq, t_deq = res["deq0"]
    n = max(unrolls)
    mem_n, t_n = res[f"explicit{n}"]
    return (f"### training step: {title}, {jax.devices()[0].platform}\n\n"
            + table(["model", "peak temp MiB", "median step ms", "fwd iters", "bwd iters", "loss"], rows)
            + f"\n\nDEQ / twin x{n}: memory {mem_deq / mem_n:.2f}x (target <= 0.25x), "
              f"step time {t_deq / t_n:.2f}x (target <= 1.5x)\n")


def _trained(run_dir: str, batch: int | None, repeats: int) -> str:
    """The same comparison from a run's newest checkpoint, on a batch of its validation split."""
    import numpy as np

    from ..data import eval_iterator
    from ..train import resume
    from ..train.loop import load_data, open_run

    session, state, step = open_run(Path(run_dir), [])
    try:
        cfg = session.cfg
        state = jax.device_get(state)
        windows = next(iter(eval_iterator(load_data(cfg), cfg.data, "valid", max_batches=1)))
    finally:
        session.close()
    tokens = np.concatenate([windows["inputs"], windows["targets"][:, -1:]], axis=1)
    if batch is not None:
        tokens = tokens[:batch]
    load = lambda extra: resume.resolve_for_run(Path(run_dir), _one_device(tokens.shape[0]) + extra)
    title = (f"{run_dir} at step {step} (checkpoint parameters), batch {tokens.shape[0]} of its "
             f"validation split, seq {cfg.model.seq_len}")
    n = cfg.train.n_unroll
    return _compare(load, state, (n, 2 * n), jnp.asarray(tokens), repeats, title)


def _solvers(preset: str, batch: int, repeats: int) -> str:
    cfg = load_config(presets.path(preset), ["model.dropout=0"]).model
    model = DEQTransformer(cfg, rngs=nnx.Rngs(0))
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
