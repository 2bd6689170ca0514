"""`deqdist bench integrity`: what the run-safety machinery costs on a preset.

Part 1: one DEQ train step (the trainer's own compiled step, deqdist.train.step)
with and without the finite-step guard, timed alternately so that machine load
falls on both alike.
Part 2: one checkpoint of the same train state: orbax's synchronous save, then
sealing it (sha256 of every file) and verifying it, the two costs checksums add.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from deqdist import presets
from deqdist.config import load_config
from deqdist.store.checkpoint import Checkpoints, seal, verify
from deqdist.train.mesh import batch_sharding, build_mesh, hooks
from deqdist.train.state import init_state, state_spec
from deqdist.train.step import Steps

from .common import table


def _time_ms(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - t) * 1e3


def run(preset: str = "small", batch: int = 8, repeats: int = 5) -> str:
    cfg = load_config(presets.path(preset), [f"data.global_batch_size={batch}", "parallel.data=1",
                                                   "model.dropout=0", "train.warmup_explicit_steps=0"])
    mesh = build_mesh(cfg)
    spec = state_spec(cfg, mesh)
    solve, unroll = hooks(mesh, cfg)
    sh = batch_sharding(mesh, cfg)
    tokens = jax.random.randint(jax.random.key(1), (batch, cfg.model.seq_len + 1), 0, cfg.model.vocab_size)
    batch_arrays = {"inputs": jax.device_put(tokens[:, :-1], sh), "targets": jax.device_put(tokens[:, 1:], sh)}
    step = 1  # not a Jacobian-regularised step: the plain DEQ step
    fns = {g: Steps(cfg, spec, sh, solve, unroll, guard=g).train_step(step) for g in (True, False)}
    states = {g: init_state(cfg, spec) for g in fns}
    times: dict[bool, list[float]] = {True: [], False: []}

    def one(g):
        states[g], m = fns[g](states[g], batch_arrays)
        return m

    for g in fns:  # compile
        one(g)
    for _ in range(repeats):
        for g in (True, False):
            times[g].append(_time_ms(lambda: one(g)))
    on, off = (float(np.median(times[g])) for g in (True, False))
    rows = [["without guard", f"{off:.1f}"], ["with guard", f"{on:.1f}"],
            ["guard cost", f"{on - off:+.1f} ({(on - off) / off:+.1%})"]]
    out = (f"### finite-step guard: {preset} preset, DEQ train step, batch {batch}, seq {cfg.model.seq_len}, "
           f"{jax.devices()[0].platform}, median of {repeats} alternating pairs\n\n"
           + table(["step", "median ms"], rows) + "\n\n")

    with tempfile.TemporaryDirectory() as d:
        ck = Checkpoints(Path(d) / "checkpoints", keep=3, async_save=False)
        state = states[True]
        t0 = time.perf_counter()
        ck.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        ck.mngr.wait_until_finished()
        save_ms = (time.perf_counter() - t0) * 1e3
        step_dir = Path(d) / "checkpoints" / str(step)
        t0 = time.perf_counter()
        seal(step_dir)
        seal_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        assert verify(step_dir) is None
        verify_ms = (time.perf_counter() - t0) * 1e3
        size = sum(p.stat().st_size for p in step_dir.rglob("*") if p.is_file())
        ck.close()
    rows = [["orbax save (synchronous)", f"{save_ms:.1f}"], ["seal: sha256 of every file", f"{seal_ms:.1f}"],
            ["verify on restore", f"{verify_ms:.1f}"]]
    return out + (f"### checkpoint checksums: {preset} train state ({size / 2**20:.1f} MiB on disk)\n\n"
                  + table(["operation", "ms"], rows) + "\n")


