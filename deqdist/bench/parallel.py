"""`deqdist bench parallel`: what each 8-device mesh costs per device for one DEQ training step.

For each (data, fsdp, tensor) mesh: per-device solver-state bytes (Broyden's steps and
Gram matrix, Anderson's history, as found in the compiled per-device program),
per-device peak temporary memory of one training step (loss + implicit-gradient
backward; compiled memory analysis), and the collectives per solver iteration in
the forward and backward solve loops (counted in the compiled program; no-op
collectives over size-1 axes excluded). Runs on 8 devices; on a CPU-only machine
it re-launches itself with 8 simulated devices.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

MESHES = [(8, 1, 1), (1, 8, 1), (2, 1, 4), (2, 2, 2), (1, 1, 8)]


def _step(model, tokens, deq_cfg, sizes):
    import jax
    from flax import nnx

    from ..model import lm_loss, local_solve
    from ..parallel import ParallelConfig, batch_sharding, make_mesh, make_solve, param_shardings

    def loss_fn(m, t, solve):
        logits, _ = m(t, deq_cfg=deq_cfg, solve=solve)
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
    from ..parallel.inspect import has_buffer, solver_loops
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


def run(preset: str = "tiny", batch: int = 8) -> str:
    import jax

    if jax.device_count() >= 8:
        return _run(preset, batch)
    if jax.default_backend() != "cpu":
        raise SystemExit(f"bench parallel needs 8 devices, found {jax.device_count()}")
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                      " --xla_force_host_platform_device_count=8").strip())
    code = f"from deqdist.bench.parallel import run; print(run({preset!r}, {batch}))"
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.rstrip()
