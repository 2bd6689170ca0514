"""`deqdist bench parallel`: what each 8-device mesh costs per device for one DEQ training step.

For each (data, fsdp, tensor) mesh: per-device solver-state bytes (Broyden's steps and
Gram matrix, Anderson's history, as found in the compiled per-device program),
per-device peak temporary memory of one training step (the trainer's own step:
loss, implicit-gradient backward, guarded AdamW update; compiled memory analysis), and the collectives per solver iteration in
the forward and backward solve loops (counted in the compiled program; no-op
collectives over size-1 axes excluded).

A second table shows what per-replica stopping (`parallel.lockstep: sample`) saves
against global lockstep on a batch whose samples need different iteration counts:
the samples of a trained checkpoint (`--run-dir`) or, without one, the `tiny` model
at init on windows of 1, 2, 4, ... distinct byte values (a synthetic spread). Per
mesh: forward and backward loop iterations per device (mean over devices) against
the global maximum that lockstep runs, and the time of the trainer's own gradient
step (`Steps.gradients`: forward solve, loss, implicit backward), both modes timed
alternately. A synchronous step still
waits for its slowest replica, so the time saved is mostly the whole-mesh all-reduce
(a sync of every device) that lockstep adds to each iteration.

Runs on 8 devices; on a CPU-only machine it re-launches itself with 8 simulated devices.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

MESHES = [(8, 1, 1), (1, 8, 1), (2, 1, 4), (2, 2, 2), (1, 1, 8)]
REPLICA_MESHES = [(8, 1, 1), (4, 1, 2), (2, 1, 4), (2, 2, 2)]


def _compiled_step(cfg, sizes):
    """The trainer's DEQ train step (deqdist.train.step) for `cfg` on a (data, fsdp, tensor) mesh of
    `sizes`, or on one device if None, compiled from abstract inputs (nothing is allocated)."""
    import jax

    from ..train.step import Steps

    devices = jax.devices()[:1] if sizes is None else None
    steps = Steps.for_config(cfg, devices)
    return steps.variant("deq", False).lower(steps.spec.abstract_for_restore(), steps.abstract_batch()).compile()


def _run(preset: str, batch: int) -> str:
    import jax

    from .. import presets
    from ..config import load_config
    from ..parallel.hlo import has_buffer, solver_loops
    from ..solvers.broyden import history_shape
    from .common import table

    base = [f"data.global_batch_size={batch}", "model.n_heads=8", "model.dropout=0", "model.emb_dropout=0"]
    S, D = (lambda m: (m.seq_len, m.d_model))(load_config(presets.path(preset), base).model)
    rows = []
    for method in ("broyden", "anderson"):
        solver = [f"solver.{d}.{k}={v}" for d in ("fwd", "bwd") for k, v in
                  (("method", method), ("max_iter", 20), ("tol", 1e-3))]
        single_state = None
        for sizes in [None] + MESHES:
            data, fsdp, tensor = sizes or (1, 1, 1)
            mesh = [f"parallel.data={data}", f"parallel.fsdp={fsdp}", f"parallel.tensor={tensor}"]
            cfg = load_config(presets.path(preset), base + solver + mesh)
            bl, nl = batch // (data * fsdp), S // tensor * D
            # History arrays are split like z; the Gram matrices are a few scalars per sample,
            # shared by the devices that split that sample.
            if method == "broyden":
                hist = history_shape(bl, nl, cfg.solver.fwd)
                m = hist[0] * hist[2]
                state_bytes, gram_bytes = 4 * math.prod(hist), 4 * bl * m * m
            else:
                m = cfg.solver.fwd.anderson_m
                hist = (bl, m, nl)
                state_bytes, gram_bytes = 4 * 2 * math.prod(hist), 4 * bl * m ** 2
            compiled = _compiled_step(cfg, sizes)
            hlo = compiled.as_text()
            found = has_buffer(hlo, hist)
            single_state = single_state or state_bytes
            temp = compiled.memory_analysis().temp_size_in_bytes
            loops = solver_loops(hlo, hist) if sizes else []
            comm = " / ".join(",".join(f"{k}:{v}" for k, v in sorted(c.items())) or "none" for c in loops) or "-"
            rows.append([method, "single device" if sizes is None else str(sizes), f"{state_bytes / 2**20:.3f}",
                         f"1/{single_state / state_bytes:g}", f"{gram_bytes / 2**10:.1f}", "yes" if found else "NO",
                         f"{temp / 2**20:.1f}", comm])
    head = (f"model {preset} (n_heads=8), batch {batch}, seq {S}, d {D}; solver max_iter 20; "
            f"{jax.device_count()} {jax.devices()[0].platform} devices\n\n")
    return head + table(["solver", "mesh (data,fsdp,tensor)", "history MiB/device", "of single",
                         "Gram KiB/device", "in HLO",
                         "step temp MiB/device", "collectives per iteration (fwd / bwd loop)"], rows)


def _checkpoint_problem(run_dir: str, batch: int):
    """(config with overrides, parameters, tokens, what they are) from the latest checkpoint of a run and
    `batch` windows of its valid split."""
    import jax
    import numpy as np

    from ..train import resume
    from ..train.loop import open_run, load_data

    cfg = resume.resolve_for_run(Path(run_dir), [])
    session, state, step = open_run(Path(run_dir), [])
    try:
        params = jax.device_get(state["params"])
    finally:
        session.close()
    ids = load_data(cfg).split("valid")
    S = cfg.model.seq_len
    starts = np.random.default_rng(0).integers(0, len(ids) - S, batch)
    tokens = np.stack([ids[i:i + S] for i in starts]).astype(np.int32)
    return (lambda o: resume.resolve_for_run(Path(run_dir), o)), params, tokens, \
        f"checkpoint {run_dir} (step {step}), {batch} windows of its valid split"


def _synthetic_problem(preset: str, batch: int):
    """The preset's model at init (8 heads, so that every mesh divides it) on token windows of 1, 2, 4, ...
    distinct bytes: samples of different structure, which need different numbers of iterations."""
    import numpy as np
    from flax import nnx

    from .. import presets
    from ..config import load_config
    from ..model import DEQTransformer

    base = ["model.n_heads=8"] + [f"solver.{d}.{k}={v}" for d in ("fwd", "bwd") for k, v in
                                  (("method", "broyden"), ("max_iter", 40), ("tol", 1e-4))]
    cfg_for = lambda o: load_config(presets.path(preset), base + o)  # noqa: E731
    model = DEQTransformer(cfg_for([]).model, rngs=nnx.Rngs(0))
    rng, S, V = np.random.default_rng(1), model.cfg.seq_len, model.cfg.vocab_size
    tokens = np.stack([rng.integers(0, min(V, 2 ** i), S) for i in range(batch)]).astype(np.int32)
    return cfg_for, nnx.to_pure_dict(nnx.state(model, nnx.Param)), tokens, \
        f"{preset} at init, sample i drawing its tokens from 2^i byte values"


def _replica_rows(preset: str, batch: int, repeats: int, run_dir: str | None) -> str:
    """Per mesh, the trainer's gradient step (`Steps.gradients`: forward solve, loss, implicit backward)
    with per-replica stopping and with global lockstep, timed alternately."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ..train.step import Steps
    from .common import table

    cfg_for, params, tokens, source = (_checkpoint_problem(run_dir, batch) if run_dir
                                       else _synthetic_problem(preset, batch))
    batch_arrays = {"inputs": jnp.asarray(tokens), "targets": jnp.roll(jnp.asarray(tokens), -1, 1)}
    rows = []
    for sizes in REPLICA_MESHES:
        calls = {}
        try:
            for lockstep in ("sample", "global"):
                cfg = cfg_for([f"data.global_batch_size={batch}", f"parallel.lockstep={lockstep}"] +
                              [f"parallel.{a}={n}" for a, n in zip(("data", "fsdp", "tensor"), sizes)])
                steps = Steps.for_config(cfg)
                calls[lockstep] = (steps.gradients("deq"), jax.device_put(params, steps.spec.shardings["params"]),
                                   jax.device_put(batch_arrays, steps.batch_sharding))
        except ValueError as e:
            rows.append([str(sizes)] + ["-"] * 7 + [f"skipped: {e}"])
            continue
        iters, times = {}, {"sample": [], "global": []}
        for lockstep, (fn, *args) in calls.items():
            aux = jax.block_until_ready(fn(*args))[2]
            iters[lockstep] = [np.asarray(a, np.float64) for a in (aux["fwd_stats"].nstep, aux["fwd_stats"].loop_iters,
                                                                   aux["bwd_stats"]["loop_iters"])]
        for _ in range(repeats):  # alternate the two modes so that a change in machine load hits both alike
            for lockstep, (fn, *args) in calls.items():
                t = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times[lockstep].append(1e3 * (time.perf_counter() - t))
        ms = {k: float(np.median(v)) for k, v in times.items()}
        (nstep, fwd, bwd), (_, fwd_g, bwd_g) = iters["sample"], iters["global"]
        rows.append([str(sizes), f"{nstep.mean():.1f}", f"{fwd.mean():.1f}", f"{fwd_g.mean():.0f}",
                     f"{bwd.mean():.1f}", f"{bwd_g.mean():.0f}", f"{ms['sample']:.1f}", f"{ms['global']:.1f}",
                     f"{100 * (1 - ms['sample'] / ms['global']):.0f}%"])
    s = cfg.solver
    head = (f"\n\nper-replica stopping vs global lockstep: {source}; batch {batch}; "
            f"solver {s.fwd.method} tol {s.fwd.tol:g}/{s.bwd.tol:g}, max_iter {s.fwd.max_iter}/{s.bwd.max_iter}; "
            f"step = the trainer's gradient step (Steps.gradients: forward solve, loss, {s.grad} backward)\n\n")
    return head + table(["mesh (data,fsdp,tensor)", "fwd per-sample mean", "fwd per-device mean", "fwd global max",
                         "bwd per-device mean", "bwd global max", "step ms (sample)", "step ms (global)", "saved"],
                        rows)


def run(preset: str = "tiny", batch: int = 8, repeats: int = 5, run_dir: str | None = None) -> str:
    import jax

    if run_dir is not None:  # bad input fails here, in one line, not in the 8-device child
        from ..store import rundir
        from ..train import resume

        resume.resolve_for_run(Path(run_dir), [])
        if not any((Path(run_dir) / rundir.CHECKPOINTS).glob("*")):
            raise rundir.RunDirError(f"{run_dir} has no checkpoints yet; train it first (deqdist train --run-dir {run_dir})")

    if jax.device_count() >= 8:
        return _run(preset, batch) + _replica_rows(preset, batch, repeats, run_dir)
    if jax.default_backend() != "cpu":
        raise SystemExit(f"bench parallel needs 8 devices, found {jax.device_count()}")
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                      " --xla_force_host_platform_device_count=8").strip())
    code = f"from deqdist.bench.parallel import run; print(run({preset!r}, {batch}, {repeats}, {run_dir!r}))"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if p.returncode:  # the child's own last line says why
        raise SystemExit((p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1])
    return p.stdout.rstrip()
