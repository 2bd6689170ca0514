"""How the model obtains its final state z from the block f: the `SolveHooks` it is called with.

The model builds f and its inputs; whoever calls it decides how z comes out of f:
solved to equilibrium (`deq` mode) or unrolled a fixed number of times (`explicit`
mode, the twin), unsharded (the defaults here) or under `shard_map` (`parallel/`
supplies the hooks, so the model names no mesh axis), with or without the
Jacobian term and the sink the backward solve's stats arrive through.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import jax

from deqdist.deq import DEQConfig, deq, unroll
from deqdist.model.collectives import LOCAL

# f(params, z, x, comms) -> z
EquilibriumFn = Callable[..., jax.Array]
# solve(f, params, x, z0, deq_cfg, bwd_sink) -> (z_star, SolveStats)
EquilibriumSolve = Callable[..., tuple[jax.Array, Any]]
# unroll(f, params, x, z0, n) -> (z_n, rel_residual (B,))
Unroll = Callable[..., tuple[jax.Array, jax.Array]]


def local_solve(f: EquilibriumFn, params, x, z0, cfg: DEQConfig, bwd_sink=None):
    """Default (unsharded) solve hook: `deq` on f with identity collectives."""
    return deq(functools.partial(f, comms=LOCAL), params, x, z0, cfg, bwd_sink=bwd_sink)


def local_unroll(f: EquilibriumFn, params, x, z0, n: int):
    """Default (unsharded) explicit-mode hook: `unroll` on f with identity collectives."""
    return unroll(functools.partial(f, comms=LOCAL), params, x, z0, n)


@dataclasses.dataclass(frozen=True)
class SolveHooks:
    """What a forward pass of the model needs besides its inputs.

    mode:        "deq" (z = z*, found by `solve`) or "explicit" (z = f^n_unroll(0), by
                 `unroll`, ordinary backprop).
    deq_cfg:     forward/backward solvers and gradient mode of the solve (deq mode).
    n_unroll:    applications of f in explicit mode (required there).
    solve:       (f, params, x, z0, deq_cfg, bwd_sink) -> (z*, SolveStats).
    unroll:      (f, params, x, z0, n) -> (z_n, relative residual (B,)).
    bwd_sink:    zeros from `deqdist.deq.backward_sink(B)`, handed to `solve`; their
                 gradient is the backward solve's stats. None: the stats are dropped.
    jac_samples: Hutchinson probes of ||J_f(z)||_F^2 at the final z (0: no Jacobian term).
    """

    mode: Literal["deq", "explicit"] = "deq"
    deq_cfg: DEQConfig = DEQConfig()
    n_unroll: int | None = None
    solve: EquilibriumSolve = local_solve
    unroll: Unroll = local_unroll
    bwd_sink: Any = None
    jac_samples: int = 0

    def __post_init__(self):
        if self.mode not in ("deq", "explicit"):
            raise ValueError(f"mode must be 'deq' or 'explicit', got {self.mode!r}")
        if self.mode == "explicit" and self.n_unroll is None:
            raise ValueError("explicit mode needs n_unroll (the number of applications of f)")
        if self.jac_samples < 0:
            raise ValueError(f"jac_samples must be >= 0, got {self.jac_samples}")
