"""The equilibrium layer: z* = f(params, z*, x), differentiated without unrolling.

`deq` solves forward once under `jax.custom_vjp`. Its backward pass is one of
  implicit  solve the adjoint fixed point g = g J_f(z*) + dL/dz* (own solver config),
  phantom   backprop through k damped steps z <- (1-a) z + a f(z) started at z*,
  onestep   Jacobian-free: g = dL/dz* (J_f treated as zero),
then pulls g back to `params` and `x`. z0 never receives a gradient.

`grad="reversible"` replaces the root finder as well (deqdist/reversible.py): a coupled
iteration that is inverted step by step in the backward pass, the exact gradient of
the iteration that ran with O(1) activation memory; it is not an equilibrium solve.

Backward-solve statistics are returned as data, with no callbacks: pass a
`bwd_sink` (zeros from `backward_sink(B)`) and differentiate with respect to it;
its "gradient" is the backward solve's per-sample stats.

`unroll` is the explicit twin: the same f applied n times and backpropagated
through, the baseline a DEQ is compared with and the warm-up it trains from.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from .reversible import ReversibleConfig, reversible_solve
from .solvers import SampleReduce, SolverConfig, SolveStats, solve

GRAD_MODES = ("implicit", "phantom", "onestep", "reversible")
# recon_error: the reversible backward's reconstruction error (0 for the other modes).
SINK_FIELDS = ("nstep", "abs_residual", "rel_residual", "converged", "loop_iters", "recon_error")


@dataclasses.dataclass(frozen=True)
class DEQConfig:
    fwd: SolverConfig = SolverConfig()
    bwd: SolverConfig = SolverConfig(tol=1e-4)
    grad: str = "implicit"
    phantom_steps: int = 5
    phantom_damping: float = 0.5
    reversible: ReversibleConfig = ReversibleConfig()

    def validate(self) -> "DEQConfig":
        if self.grad not in GRAD_MODES:
            raise ValueError(f"deq grad mode {self.grad!r} is unknown; use one of {', '.join(GRAD_MODES)}")
        if self.phantom_steps < 1 or not 0 < self.phantom_damping <= 1:
            raise ValueError("deq phantom_steps must be >= 1 and phantom_damping in (0, 1]")
        self.fwd.validate()
        self.bwd.validate()
        if self.grad == "reversible":
            self.reversible.validate()
        return self


def backward_sink(batch: int) -> dict[str, jax.Array]:
    """Zeros whose gradient, through `deq(..., bwd_sink=sink)`, is the backward solve's stats."""
    return {k: jnp.zeros((batch,), jnp.float32) for k in SINK_FIELDS}


def deq(f: Callable[[Any, jax.Array, Any], jax.Array], params: Any, x: Any, z0: jax.Array,
        cfg: DEQConfig = DEQConfig(), *, reduce: SampleReduce = SampleReduce(),
        bwd_sink: dict[str, jax.Array] | None = None) -> tuple[jax.Array, SolveStats]:
    """Return (z*, forward SolveStats) for z* = f(params, z*, x), solved from z0."""
    cfg.validate()
    if bwd_sink is None:
        bwd_sink = backward_sink(z0.shape[0])
    if cfg.grad == "reversible":
        return reversible_solve(f, cfg.reversible, reduce, params, x, jax.lax.stop_gradient(z0), bwd_sink)
    return _deq(f, cfg, reduce, params, x, jax.lax.stop_gradient(z0), bwd_sink)


def unroll(f: Callable[[Any, jax.Array, Any], jax.Array], params: Any, x: Any, z0: jax.Array, n: int, *,
           reduce: SampleReduce = SampleReduce()) -> tuple[jax.Array, jax.Array]:
    """The explicit twin of `deq`: z_n = f^n(params, z0, x) by `lax.scan`, differentiated by
    ordinary backprop. Returns (z_n, ||z_n - z_{n-1}|| / ||z_n|| per sample in float32)."""
    if n < 1:
        raise ValueError(f"n_unroll must be >= 1, got {n}")

    def body(carry, _):
        z, _ = carry
        return (f(params, z, x), z), None

    (z, z_prev), _ = jax.lax.scan(body, (z0, z0), None, length=n)
    step = reduce.norm((z - z_prev).astype(jnp.float32))
    return z, step / (reduce.norm(z.astype(jnp.float32)) + 1e-12)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _deq(f, cfg: DEQConfig, reduce: SampleReduce, params, x, z0, sink):
    return solve(lambda z: f(params, z, x), z0, cfg.fwd, reduce)


def _deq_fwd(f, cfg, reduce, params, x, z0, sink):
    z, stats = solve(lambda z: f(params, z, x), z0, cfg.fwd, reduce)
    return (z, stats), (params, x, z, z0, sink)


def _deq_bwd(f, cfg: DEQConfig, reduce: SampleReduce, res, cts):
    params, x, z, z0, sink = res
    dz = cts[0]
    if cfg.grad == "implicit":
        _, vjp_z = jax.vjp(lambda z: f(params, z, x), z)
        # The adjoint map is affine, g -> g J + dz: |dz| is its scale (|b|), whatever J is.
        g, stats = solve(lambda g: vjp_z(g)[0] + dz, dz, cfg.bwd, reduce, scale=reduce.norm(dz))
        sink_ct = {"nstep": stats.nstep, "abs_residual": stats.abs_residual,
                   "rel_residual": stats.rel_residual, "converged": stats.converged, "loop_iters": stats.loop_iters}
        _, vjp_px = jax.vjp(lambda p, x: f(p, z, x), params, x)
        dp, dx = vjp_px(g)
    elif cfg.grad == "phantom":
        a = cfg.phantom_damping

        def unrolled(p, x):
            zk = z
            for _ in range(cfg.phantom_steps):
                zk = (1.0 - a) * zk + a * f(p, zk, x)
            return zk

        _, vjp_px = jax.vjp(unrolled, params, x)
        dp, dx = vjp_px(dz)
        n = jnp.full_like(sink["nstep"], cfg.phantom_steps)
        sink_ct = {"nstep": n, "loop_iters": n}
    else:
        _, vjp_px = jax.vjp(lambda p, x: f(p, z, x), params, x)
        dp, dx = vjp_px(dz)
        sink_ct = {"nstep": jnp.ones_like(sink["nstep"]), "loop_iters": jnp.ones_like(sink["nstep"])}
    sink_ct = {k: sink_ct.get(k, sink[k]).astype(jnp.float32) for k in SINK_FIELDS}
    return dp, dx, jnp.zeros_like(z0), sink_ct


_deq.defvjp(_deq_fwd, _deq_bwd)


def deq_module(module, x: Any, z0: jax.Array, cfg: DEQConfig = DEQConfig(), **kwargs):
    """Make any Flax NNX module called as `module(z, x)` a DEQ layer: (z*, stats)."""
    from flax import nnx

    graphdef, state = nnx.split(module)

    def f(state, z, x):
        return nnx.merge(graphdef, state)(z, x)

    return deq(f, state, x, z0, cfg, **kwargs)
