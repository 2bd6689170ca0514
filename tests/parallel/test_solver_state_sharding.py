"""On the compiled per-device program: solver state is split 8 ways and the loop communicates little."""
import math

import jax.numpy as jnp
import pytest

from deqdist.parallel.hlo import has_buffer, solver_loops
from deqdist.solvers.broyden import history_shape
from harness import deq_cfg, model_and_tokens, sharded_step

B, S, D = 8, 64, 64


@pytest.mark.parametrize("sizes", [(1, 8, 1), (2, 1, 4), (2, 2, 2)])
def test_broyden_state_is_sharded_like_z(sizes):
    data, fsdp, tensor = sizes
    cfg = deq_cfg("broyden")
    model, tokens = model_and_tokens(B, S)
    # Global lockstep: the stop test communicates on every mesh, so both loops show up below.
    _, lowered, _ = sharded_step(model, tokens, cfg, sizes, run=False, lockstep="global")
    hlo = lowered.compile().as_text()
    full = history_shape(B, S * D, cfg.fwd)
    local = history_shape(B // (data * fsdp), S // tensor * D, cfg.fwd)
    assert math.prod(local) * 8 == math.prod(full)
    assert has_buffer(hlo, local) and not has_buffer(hlo, full)
    loops = solver_loops(hlo, local)
    assert len(loops) == 2  # forward solve and implicit backward solve
    for c in loops:
        if tensor == 1:
            # No sequence split: weights were gathered before the loop, nothing is gathered inside.
            assert c["all-gather"] == 0 and c["reduce-scatter"] == 0
        else:
            # Megatron sequence parallelism: one gather + one reduce-scatter per sub-layer.
            assert c["all-gather"] == 2 and c["reduce-scatter"] == 2
        assert 1 <= c["all-reduce"] <= 4  # solver dot products (combined) + the lockstep stop test


def test_anderson_history_is_sharded_like_z():
    cfg = deq_cfg("anderson")
    model, tokens = model_and_tokens(B, S)
    _, lowered, _ = sharded_step(model, tokens, cfg, (2, 2, 2), run=False)
    hlo = lowered.compile().as_text()
    m = cfg.fwd.anderson_m
    assert has_buffer(hlo, (B // 4, m, S // 2 * D)) and not has_buffer(hlo, (B, m, S * D))


def test_data_parallel_devices_stop_on_their_own():
    # No axis splits a sample: by default (per-replica stopping) the loop has no collective at all.
    cfg = deq_cfg("broyden")
    model, tokens = model_and_tokens(B, S)
    out, lowered, _ = sharded_step(model, tokens, cfg, (8, 1, 1))
    local = history_shape(1, S * D, cfg.fwd)
    hlo = lowered.compile().as_text()
    assert has_buffer(hlo, local) and solver_loops(hlo, local) == []
    assert bool(jnp.isfinite(out[0]))
