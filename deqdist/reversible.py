"""Reversible mode: a coupled fixed-point iteration, differentiated by undoing it step by step.

After McCallum, Arora and Foster, "Reversible Deep Equilibrium Models" (2025). From
y_0 = z_0 the forward runs

    y_{k+1} = (1 - b) y_k + b f(z_k)
    z_{k+1} = (1 - b) z_k + b f(y_{k+1})

for `steps` steps and returns z_n. Each step is algebraically invertible,

    z_k = (z_{k+1} - b f(y_{k+1})) / (1 - b),    y_k = (y_{k+1} - b f(z_k)) / (1 - b),

so the backward pass walks the iteration back from its last state, pulling the
cotangents through each step's two f-evaluations on the way. It stores the final
(y, z), each sample's step count and, every `checkpoint_every` steps, the pair (y, z):
O(1) activation memory in the number of steps, and the exact gradient of the
iteration that ran (not of a fixed point: none is assumed, none is reached in general).

Rounding: an inverse step divides by 1 - b and goes through f again, so it amplifies
the rounding of the forward step by about (1 + b) / (1 - b) (for f 1-Lipschitz). The
reversal restarts from each stored pair, so errors grow over at most `checkpoint_every`
steps; `ReversibleConfig.check_dtype` refuses spans whose error would pass
`EXACT_BOUND` in the compute dtype (the whole of bfloat16 and float16: a single step
loses the state there). The backward reports what it measured: the largest distance,
per sample, between a reconstructed state and the stored one (the start state
included), relative to the final state's norm.

Residual stop (`tol`): a sample stops when r = |f(y_{k+1}) - z_{k+1}| <= tol * S, with
S = |f(z_0) - z_0| (both free: f(y_{k+1}) and f(z_0) are evaluated by the steps), and
stays frozen; the backward undoes exactly the steps that sample took. Without `tol`
every sample takes `steps` steps. r / S of the last step is reported as the forward's
relative residual (at a fixed point y = z = z*, r = 0).

Sharding: everything is per sample (rows) and every norm goes through `SampleReduce`,
so the same code runs inside `shard_map`. Parameter cotangents are accumulated on each
device's rows and summed over the batch axes once, after the loop (the loop's length
may differ between data replicas when `tol` is set).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from .solvers import SampleReduce, SolveStats

# Largest reconstruction error (relative to the state) accepted as exact in a reversal span.
EXACT_BOUND = 1e-4


def max_span(dtype: Any, b: float) -> int:
    """Most steps that can be undone in `dtype` at coupling `b` with error <= EXACT_BOUND."""
    eps = float(jnp.finfo(jnp.dtype(dtype)).eps)
    growth = (1.0 + b) / (1.0 - b)
    return max(int(math.floor(math.log(EXACT_BOUND / eps) / math.log(growth))), 0) if EXACT_BOUND > eps else 0


@dataclasses.dataclass(frozen=True)
class ReversibleConfig:
    """steps: coupled steps (2 f-evaluations each, forward and backward); b: coupling in (0, 1);
    tol: optional relative residual stop (null: always `steps`); checkpoint_every: store (y, z)
    every this many steps and restart the reversal there (0: store only the final state)."""

    steps: int = 6
    b: float = 0.5
    tol: float | None = None
    checkpoint_every: int = 4

    @property
    def span(self) -> int:
        """The most steps undone from one stored pair."""
        return min(self.checkpoint_every or self.steps, self.steps)

    def validate(self) -> "ReversibleConfig":
        if self.steps < 1:
            raise ValueError(f"solver.reversible.steps must be >= 1, got {self.steps}")
        if not 0 < self.b < 1:
            raise ValueError(f"solver.reversible.b must be in (0, 1), got {self.b}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"solver.reversible.tol must be > 0 or null, got {self.tol}")
        if self.checkpoint_every < 0:
            raise ValueError(f"solver.reversible.checkpoint_every must be >= 0 (0: final state only), "
                             f"got {self.checkpoint_every}")
        return self

    def check_dtype(self, dtype: Any, where: str) -> None:
        """ValueError unless every reversal span can be undone exactly in `dtype` (named by `where`)."""
        name = jnp.dtype(dtype).name
        limit = max_span(dtype, self.b)
        if limit < 1:
            raise ValueError(f"solver.grad=reversible cannot undo even one step exactly in {name} ({where}); "
                             f"set {where}=float32")
        if self.span > limit:
            raise ValueError(f"solver.reversible: {self.span} {name} steps between stored states at b={self.b} "
                             f"cannot be undone exactly (at most {limit}); set solver.reversible.checkpoint_every="
                             f"{limit} or lower, or lower solver.reversible.b")


def _mask(rows: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(rows.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def _vma(a) -> frozenset:
    mat = getattr(jax.typeof(a), "manual_axis_type", None)
    return mat.varying if mat is not None else frozenset()


def _vary_like(tree: Any, ref: jax.Array) -> Any:
    """Each leaf made varying over the manual axes `ref` varies over (a no-op outside shard_map),
    so VJPs with respect to it are per device and not summed over the batch axes at every step."""
    want = _vma(ref)

    def one(a):
        axes = tuple(sorted(want - _vma(a)))
        return lax.pcast(a, axes, to="varying") if axes else a

    return jax.tree.map(one, tree)


def _sum_like(ct: Any, primal: Any) -> Any:
    """Cotangents psummed over the axes they vary over and their primals do not."""
    def one(c, p):
        axes = tuple(sorted(_vma(c) - _vma(p)))
        return lax.psum(c, axes) if axes else c

    return jax.tree.map(one, ct, primal)


def _flat_f(f: Callable, shape, dtype, acc):
    batch = shape[0]

    def ff(params, z, x):
        return f(params, z.reshape(shape).astype(dtype), x).reshape(batch, -1).astype(acc)

    return ff


def _forward(f, cfg: ReversibleConfig, reduce: SampleReduce, params, x, z0):
    """(z_n, stats, residuals for the backward)."""
    shape, dtype = z0.shape, z0.dtype
    acc = jnp.promote_types(dtype, jnp.float32)
    ff = _flat_f(f, shape, dtype, acc)
    b, span = cfg.b, cfg.span
    n_ck = (cfg.steps - 1) // span
    z_start = z0.reshape(shape[0], -1).astype(acc)
    zeros_r = reduce.zeros(z_start, (shape[0],))
    tol = cfg.tol

    def done(r, s_ref):
        if tol is None:
            return jnp.zeros_like(r, dtype=bool)
        return jnp.isfinite(r) & (r <= tol * s_ref)

    def cond(s):
        k, _, _, active = s[:4]
        return (k < cfg.steps) & reduce.any_active(active)

    def body(s):
        k, y, z, active, nstep, r, s_ref, ck = s
        fz = ff(params, z, x)
        s_ref = jnp.where(k == 0, reduce.norm(fz - z), s_ref)
        y1 = (1 - b) * y + b * fz
        fy = ff(params, y1, x)
        z1 = (1 - b) * z + b * fy
        r1 = reduce.norm(fy - z1)
        r1 = jnp.where(jnp.isnan(r1), jnp.inf, r1)
        y, z = _mask(active, y1, y), _mask(active, z1, z)
        r = jnp.where(active, r1, r)
        nstep = nstep + active.astype(jnp.int32)
        active = active & ~done(r, s_ref) & jnp.isfinite(r)
        if n_ck:
            j = jnp.clip((k + 1) // span - 1, 0, n_ck - 1)
            store = ((k + 1) % span == 0) & ((k + 1) // span <= n_ck)
            ck = ck.at[j].set(jnp.where(store, jnp.stack([y, z]), ck[j]))
        return k + 1, y, z, active, nstep, r, s_ref, ck

    ck = jnp.zeros_like(z_start, shape=(n_ck, 2) + z_start.shape) if n_ck else None
    init = (jnp.zeros((), jnp.int32), z_start, z_start, jnp.ones_like(zeros_r, dtype=bool),
            jnp.zeros_like(zeros_r, dtype=jnp.int32), zeros_r, zeros_r, ck)
    k, y, z, _, nstep, r, s_ref, ck = lax.while_loop(cond, body, init)
    rel = jnp.where(r == 0, 0.0, r / s_ref)
    stats = SolveStats(nstep=nstep, abs_residual=r, rel_residual=rel, converged=done(r, s_ref),
                       diverged=~jnp.isfinite(r), loop_iters=jnp.full_like(nstep, k))
    return z.reshape(shape).astype(dtype), stats, (y, z, ck, nstep, k)


def _backward(f, cfg: ReversibleConfig, reduce: SampleReduce, params, x, z0, saved, dz):
    """(d params, d x, reconstruction error (B,)): the steps undone from the last, VJPs accumulated."""
    y, z, ck, nstep, n_iter = saved
    shape = z0.shape
    acc = y.dtype
    ff = _flat_f(f, shape, z0.dtype, acc)
    b, span = cfg.b, cfg.span
    n_ck = (cfg.steps - 1) // span
    params_v = _vary_like(params, y)
    scale = jnp.sqrt(reduce.dot(y, y) + reduce.dot(z, z))
    scale = jnp.where(scale > 0, scale, 1.0)

    def dist(y, z, y_true, z_true):
        return jnp.sqrt(reduce.dot(y - y_true, y - y_true) + reduce.dot(z - z_true, z - z_true)) / scale

    def body(s):
        k, y, z, gy, gz, dp, dx, err = s
        if n_ck:
            j = jnp.clip((k + 1) // span - 1, 0, n_ck - 1)
            restart = ((k + 1) % span == 0) & ((k + 1) // span <= n_ck) & (k + 1 < n_iter)
            err = jnp.where(restart, jnp.maximum(err, dist(y, z, ck[j, 0], ck[j, 1])), err)
            y, z = jnp.where(restart, ck[j, 0], y), jnp.where(restart, ck[j, 1], z)
        active = k < nstep
        # z_{k+1} = (1 - b) z_k + b f(y_{k+1})
        fy, vjp_y = jax.vjp(lambda p, xx, yy: ff(p, yy, xx), params_v, x, y)
        dp1, dx1, gy_add = vjp_y(b * _mask(active, gz, jnp.zeros_like(gz)))
        z_prev = (z - b * fy) / (1 - b)
        gy = gy + gy_add
        # y_{k+1} = (1 - b) y_k + b f(z_k)
        fz, vjp_z = jax.vjp(lambda p, xx, zz: ff(p, zz, xx), params_v, x, z_prev)
        dp2, dx2, gz_add = vjp_z(b * _mask(active, gy, jnp.zeros_like(gy)))
        y_prev = (y - b * fz) / (1 - b)
        gz = _mask(active, (1 - b) * gz + gz_add, gz)
        gy = _mask(active, (1 - b) * gy, gy)
        y, z = _mask(active, y_prev, y), _mask(active, z_prev, z)
        add = lambda t, u, v: jax.tree.map(lambda a, c, d: a + c + d, t, u, v)
        return k - 1, y, z, gy, gz, add(dp, dp1, dp2), add(dx, dx1, dx2), err

    gz = dz.reshape(y.shape).astype(acc)
    init = (n_iter - 1, y, z, jnp.zeros_like(y), gz, jax.tree.map(jnp.zeros_like, params_v),
            jax.tree.map(jnp.zeros_like, x), jnp.zeros_like(scale))
    _, y, z, _, _, dp, dx, err = lax.while_loop(lambda s: s[0] >= 0, body, init)
    z_start = z0.reshape(y.shape).astype(acc)
    err = jnp.maximum(err, dist(y, z, z_start, z_start))
    return _sum_like(dp, params), dx, err


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _reversible(f, cfg: ReversibleConfig, reduce: SampleReduce, params, x, z0, sink):
    z, stats, _ = _forward(f, cfg, reduce, params, x, z0)
    return z, stats


def _reversible_fwd(f, cfg, reduce, params, x, z0, sink):
    z, stats, saved = _forward(f, cfg, reduce, params, x, z0)
    return (z, stats), (params, x, z0, saved, sink)


def _reversible_bwd(f, cfg, reduce, res, cts):
    params, x, z0, saved, sink = res
    dp, dx, err = _backward(f, cfg, reduce, params, x, z0, saved, cts[0])
    nstep, n_iter = saved[3], saved[4]
    sink_ct = {k: jnp.zeros_like(v) for k, v in sink.items()}
    sink_ct.update(nstep=nstep.astype(jnp.float32), loop_iters=jnp.full_like(sink["nstep"], n_iter),
                   recon_error=err.astype(jnp.float32))
    return dp, dx, jnp.zeros_like(z0), sink_ct


_reversible.defvjp(_reversible_fwd, _reversible_bwd)


def reversible_solve(f: Callable[[Any, jax.Array, Any], jax.Array], cfg: ReversibleConfig, reduce: SampleReduce,
                     params: Any, x: Any, z0: jax.Array, sink: dict[str, jax.Array]) -> tuple[jax.Array, SolveStats]:
    """(z_n, forward SolveStats) of the coupled iteration; `sink`'s gradient carries the backward's
    steps (`nstep`, `loop_iters`) and reconstruction error (`recon_error`), as in `deqdist.deq.deq`."""
    cfg.validate()
    return _reversible(f, cfg, reduce, params, x, z0, sink)
