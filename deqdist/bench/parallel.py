"""`deqdist bench parallel`: what each 8-device mesh costs per device for one DEQ training step.

For each (data, fsdp, tensor) mesh: per-device solver-state bytes (Broyden's steps and
Gram matrix, Anderson's history, as found in the compiled per-device program),
per-device peak temporary memory of one training step (loss + implicit-gradient
backward; compiled memory analysis), and the collectives per solver iteration in
the forward and backward solve loops (counted in the compiled program; no-op
collectives over size-1 axes excluded).

A second table shows what per-replica stopping (`parallel.lockstep: sample`) saves
against global lockstep on a batch whose samples need different iteration counts:
the samples of a trained checkpoint (`--run-dir`) or, without one, the `tiny` model
with each sample's injection scaled by a random factor (a synthetic spread). Per
mesh: forward and backward loop iterations per device (mean over devices) against
the global maximum that lockstep runs, and the time of one solve step (forward
solve + implicit backward), both modes timed alternately. A synchronous step still
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


def _step(model, tokens, deq_cfg, sizes):
    import jax
    from flax import nnx

    from ..model import SolveHooks, lm_loss, local_solve
    from ..parallel import ParallelConfig, batch_sharding, make_mesh, make_solve, param_shardings

    def loss_fn(m, t, solve):
        logits, _ = m(t, SolveHooks(deq_cfg=deq_cfg, solve=solve))
        return lm_loss(logits[:, :-1], t[:, 1:])

    graphdef, state = nnx.split(model)
    if sizes is None:
        step = lambda s, t: nnx.grad(loss_fn)(nnx.merge(graphdef, s), t, local_solve)
        return jax.jit(step).lower(state, tokens).compile()
    pc = ParallelConfig(*sizes)
    mesh = make_mesh(pc)
    solve = make_solve(mesh, pc)
    step = lambda s, t: nnx.grad(loss_fn)(nnx.merge(graphdef, s), t, solve)
    with jax.set_mesh(mesh):
        sh = param_shardings(state, mesh, pc)
        state = jax.device_put(state, sh)
        tokens = jax.device_put(tokens, batch_sharding(mesh, pc))
        return jax.jit(step, in_shardings=(sh, batch_sharding(mesh, pc))).lower(state, tokens).compile()


def _run(preset: str, batch: int) -> str:
    import jax
    from flax import nnx

    from ..deq import DEQConfig
    from ..model import get_preset
    from ..parallel.hlo import has_buffer, solver_loops
    from ..solvers import SolverConfig
    from ..solvers.broyden import history_shape
    from .common import table

    cfg = get_preset(preset, n_heads=8)
    model = cfg.create(nnx.Rngs(0))
    S, D = cfg.seq_len, cfg.d_model
    tokens = jax.random.randint(jax.random.key(1), (batch, S), 0, cfg.vocab_size)
    rows = []
    for method in ("broyden", "anderson"):
        solver = SolverConfig(method=method, max_iter=20, tol=1e-3)
        deq_cfg = DEQConfig(fwd=solver, bwd=solver)
        single_state = None
        for sizes in [None] + MESHES:
            data, fsdp, tensor = sizes or (1, 1, 1)
            bl, nl = batch // (data * fsdp), S // tensor * D
            # History arrays are split like z; the Gram matrices are a few scalars per sample,
            # shared by the devices that split that sample.
            if method == "broyden":
                hist = history_shape(bl, nl, solver)
                m = hist[0] * hist[2]
                state_bytes, gram_bytes = 4 * math.prod(hist), 4 * bl * m * m
            else:
                hist = (bl, solver.anderson_m, nl)
                state_bytes, gram_bytes = 4 * 2 * math.prod(hist), 4 * bl * solver.anderson_m ** 2
            compiled = _step(model, tokens, deq_cfg, sizes)
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
    """(model, tokens, solver config) from the latest checkpoint of a run and its valid split."""
    import jax
    import numpy as np
    from flax import nnx

    from ..train import rundir as rd
    from ..train.loop import open_run, load_data

    cfg = rd.resolve_for_run(Path(run_dir), [])
    session, state, step = open_run(Path(run_dir), [])
    try:
        model = nnx.merge(session.spec.graphdef, jax.device_get(state["params"]))
    finally:
        session.close()
    ids = load_data(cfg).split("valid")
    S = cfg.model.seq_len
    starts = np.random.default_rng(0).integers(0, len(ids) - S, batch)
    tokens = np.stack([ids[i:i + S] for i in starts]).astype(np.int32)
    return model, tokens, cfg.solver, f"checkpoint {run_dir} (step {step}), {batch} windows of its valid split"


def _synthetic_problem(preset: str, batch: int):
    import jax
    from flax import nnx

    from ..deq import DEQConfig
    from ..model import get_preset
    from ..solvers import SolverConfig

    model = get_preset(preset, n_heads=8).create(nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, model.cfg.seq_len), 0, model.cfg.vocab_size)
    solver = SolverConfig(max_iter=40, tol=1e-4)
    return model, tokens, DEQConfig(fwd=solver, bwd=solver), f"{preset} at init, injection of each sample scaled by 0.3..4"


def _replica_rows(preset: str, batch: int, repeats: int, run_dir: str | None) -> str:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding

    from ..deq import backward_sink
    from ..parallel import ParallelConfig, activation_spec, check_divisible, make_mesh, make_solve
    from .common import table

    if run_dir:
        model, tokens, deq_cfg, source = _checkpoint_problem(run_dir, batch)
        scales = np.ones(batch)
    else:
        model, tokens, deq_cfg, source = _synthetic_problem(preset, batch)
        scales = np.exp(np.random.default_rng(0).uniform(np.log(0.3), np.log(4.0), batch))
    f, params = model.split_block()
    x = model.inject(jnp.asarray(tokens))
    x = dict(x, inj=x["inj"] * jnp.asarray(scales, x["inj"].dtype)[:, None, None])
    z0 = model.z0(jnp.asarray(tokens))
    w = jax.random.normal(jax.random.key(2), z0.shape, z0.dtype)
    rows = []
    for sizes in REPLICA_MESHES:
        m = model.cfg
        mesh = make_mesh(ParallelConfig(*sizes))
        try:
            for name, size in (("batch", batch), ("seq", m.seq_len), ("heads", m.n_heads), ("mlp", m.d_mlp)):
                spec = activation_spec(ParallelConfig(*sizes), name)
                check_divisible((size,), NamedSharding(mesh, spec), f"logical axis {name!r}")
        except ValueError as e:
            rows.append([str(sizes)] + ["-"] * 7 + [f"skipped: {e}"])
            continue
        steps, iters, times = {}, {}, {"sample": [], "global": []}
        for lockstep in times:
            pc = ParallelConfig(*sizes, lockstep=lockstep)
            solve = make_solve(mesh, pc)

            def step(params, x, sink, solve=solve):
                def loss(params, sink):
                    z, st = solve(f, params, x, z0, deq_cfg, sink)
                    return jnp.sum(z * w), st

                (g, sink_ct), st = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, sink)
                return g, st.nstep, st.loop_iters, sink_ct["loop_iters"]

            steps[lockstep] = jax.jit(step)
        with jax.set_mesh(mesh):
            args = (params, x, backward_sink(batch))
            for lockstep, fn in steps.items():
                iters[lockstep] = [np.asarray(a, np.float64) for a in jax.block_until_ready(fn(*args))[1:]]
            # Alternate the two modes so that a change in machine load hits both alike.
            for _ in range(repeats):
                for lockstep, fn in steps.items():
                    t = time.perf_counter()
                    jax.block_until_ready(fn(*args))
                    times[lockstep].append(1e3 * (time.perf_counter() - t))
        ms = {k: float(np.median(v)) for k, v in times.items()}
        nstep, fwd, bwd = iters["sample"]
        fwd_g, bwd_g = iters["global"][1:]
        rows.append([str(sizes), f"{nstep.mean():.1f}", f"{fwd.mean():.1f}", f"{fwd_g.mean():.0f}",
                     f"{bwd.mean():.1f}", f"{bwd_g.mean():.0f}", f"{ms['sample']:.1f}", f"{ms['global']:.1f}",
                     f"{100 * (1 - ms['sample'] / ms['global']):.0f}%"])
    head = (f"\n\nper-replica stopping vs global lockstep: {source}; batch {batch}; "
            f"solver {deq_cfg.fwd.method} tol {deq_cfg.fwd.tol:g}/{deq_cfg.bwd.tol:g}, "
            f"max_iter {deq_cfg.fwd.max_iter}/{deq_cfg.bwd.max_iter}; step = forward solve + implicit backward\n\n")
    return head + table(["mesh (data,fsdp,tensor)", "fwd per-sample mean", "fwd per-device mean", "fwd global max",
                         "bwd per-device mean", "bwd global max", "step ms (sample)", "step ms (global)", "saved"],
                        rows)


def run(preset: str = "tiny", batch: int = 8, repeats: int = 5, run_dir: str | None = None) -> str:
    import jax

    if run_dir is not None:  # bad input fails here, in one line, not in the 8-device child
        from ..train import rundir as rd

        rd.resolve_for_run(Path(run_dir), [])
        if not any((Path(run_dir) / rd.CHECKPOINTS).glob("*")):
            raise rd.RunDirError(f"{run_dir} has no checkpoints yet; train it first (deqdist train --run-dir {run_dir})")

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
