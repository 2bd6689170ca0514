"""Train-step time of trained runs, timed in turns.

`bench lm` trains its models one after another, so their logged step times meet
different machine loads. Here each run's newest checkpoint is restored and its own
compiled train step is timed on one batch of its validation split, one model after
another in every round; the median over rounds is then comparable between models.
A round times the steps of one cadence of the Jacobian term (train.jac_reg_every),
so a model that pays the term every k-th step is charged for it 1/k of the time.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np


def _prepare(run_dir: Path):
    """(step function of one round, number of steps it runs) for a run's newest checkpoint."""
    from ..data import eval_iterator
    from ..train.loop import load_data, open_run
    from ..train.step import Steps

    session, state, _ = open_run(run_dir, [])
    try:
        cfg = session.cfg
        batch = next(iter(eval_iterator(load_data(cfg), cfg.data, "valid", max_batches=1)))
    finally:
        session.close()
    steps = Steps.for_config(cfg)
    batch = {k: jax.device_put(batch[k], steps.batch_sharding) for k in ("inputs", "targets")}
    t = cfg.train
    cadence = t.jac_reg_every if t.jac_reg_every > 0 and t.jac_reg_weight > 0 else 1
    fns = [steps.train_step(t.steps - cadence + i) for i in range(cadence)]
    holder = {"state": jax.device_put(state, steps.spec.shardings)}

    def round_():
        for fn in fns:
            holder["state"], metrics = fn(holder["state"], batch)
        jax.block_until_ready(metrics)

    return round_, cadence


def interleaved_ms(run_dirs: dict[str, Path], rounds: int = 10) -> dict[str, float]:
    """Median ms per train step of each labelled run, its steps timed in turns with the others'."""
    jobs = {label: _prepare(Path(d)) for label, d in run_dirs.items()}
    for fn, _ in jobs.values():
        fn()  # compile
    times: dict[str, list[float]] = {label: [] for label in jobs}
    for _ in range(rounds):
        for label, (fn, n) in jobs.items():
            t0 = time.perf_counter()
            fn()
            times[label].append((time.perf_counter() - t0) * 1e3 / n)
    return {label: float(np.median(ts)) for label, ts in times.items()}
