"""What every root finder shares: its config, its stats, per-sample reductions, and the loop.

A solver method only says how to propose the next iterate from the current one
(`Method.init` / `Method.update`). `run` owns everything else, so per-sample
stopping, freezing, best-iterate tracking and divergence handling are written once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax

METHODS = ("broyden", "anderson", "picard")
STOP_MODES = ("rel", "abs")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """One config for every root finder; `method` picks which one `solve` runs."""

    method: str = "broyden"
    max_iter: int = 30
    tol: float = 1e-3
    stop_mode: str = "rel"
    # Broyden: number of low-rank columns kept (a ring buffer once full). Bounds memory and
    # per-step cost independently of max_iter.
    memory: int = 32
    # Anderson: history size, ridge on the normal equations, mixing.
    anderson_m: int = 5
    anderson_ridge: float = 1e-4
    anderson_beta: float = 1.0
    # Picard: z <- (1 - damping) z + damping f(z).
    damping: float = 1.0
    # Iterates and solver state are kept in at least this precision (bf16 models solve in f32).
    acc_dtype: str = "float32"
    # A sample whose residual exceeds divergence * (its first residual) or is not finite is
    # stopped and reported diverged.
    divergence: float = 1e4
    trace: bool = False

    def validate(self) -> "SolverConfig":
        if self.method not in METHODS:
            raise ValueError(f"solver method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.stop_mode not in STOP_MODES:
            raise ValueError(f"solver stop_mode {self.stop_mode!r} is unknown; use 'rel' or 'abs'")
        if self.max_iter < 1:
            raise ValueError(f"solver max_iter must be >= 1, got {self.max_iter}")
        if not self.tol > 0:
            raise ValueError(f"solver tol must be > 0, got {self.tol}")
        if self.memory < 1 or self.anderson_m < 1:
            raise ValueError("solver memory and anderson_m must be >= 1")
        return self


class SolveStats(NamedTuple):
    """Per-sample results of one solve; all arrays, shape (B,) (trace: (B, max_iter) or None)."""

    nstep: jax.Array
    abs_residual: jax.Array
    rel_residual: jax.Array
    converged: jax.Array
    diverged: jax.Array
    # Iterations the solver loop ran on this device (one value repeated per sample): the
    # compute this device spent, set by the slowest sample that shared its stop test.
    loop_iters: jax.Array
    trace: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class SampleReduce:
    """Per-sample reductions, aware of mesh axes that split a sample.

    `axes`: mesh axes over which one sample's features are sharded (e.g. the sequence
    split over `tensor`); every inner product and norm psums over them, so the same
    solver code runs unsharded and inside `shard_map`.
    `lockstep_axes`: axes over which the loop's stop test is reduced: the devices along
    them iterate the same number of times (needed over every axis that f or the solver
    communicates over inside the loop, i.e. at least `axes`).
    """

    axes: tuple[str, ...] = ()
    lockstep_axes: tuple[str, ...] = ()

    def sum(self, x: jax.Array) -> jax.Array:
        """Sum over every non-batch axis of x -> (B,)."""
        return self.psum(jnp.sum(x, axis=tuple(range(1, x.ndim))))

    def dot(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return self.sum(a * b)

    def norm(self, a: jax.Array) -> jax.Array:
        return jnp.sqrt(self.dot(a, a))

    def psum(self, partial: jax.Array) -> jax.Array:
        """Finish a per-sample reduction whose local part was computed elsewhere."""
        return _psum_varying(partial, self.axes)

    def zeros(self, z: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Zeros typed like a per-sample reduction of z (invariant over the sample axes)."""
        return jnp.zeros_like(self.sum(z[:, :1]), shape=shape)

    def any_active(self, active: jax.Array) -> jax.Array:
        return _psum_varying(jnp.any(active).astype(jnp.int32), self.lockstep_axes) > 0


def _psum_varying(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """psum over those of `axes` that x varies over (inside shard_map); a no-op elsewhere."""
    mat = getattr(jax.typeof(x), "manual_axis_type", None)
    varying = mat.varying if mat is not None else frozenset()
    axes = tuple(a for a in axes if a in varying)
    return lax.psum(x, axes) if axes else x


class Method(Protocol):
    def init(self, z: jax.Array, fz: jax.Array, cfg: SolverConfig, red: "SampleReduce") -> Any: ...

    def update(self, state: Any, z: jax.Array, fz: jax.Array, k: jax.Array,
               cfg: SolverConfig, red: SampleReduce) -> tuple[jax.Array, Any]:
        """Given iterate z (B, N) and f(z), return the next iterate to evaluate."""
        ...


class _Loop(NamedTuple):
    k: jax.Array
    z: jax.Array
    fz: jax.Array
    active: jax.Array
    best_z: jax.Array
    best_abs: jax.Array
    best_rel: jax.Array
    first_res: jax.Array
    nstep: jax.Array
    diverged: jax.Array
    trace: jax.Array | None
    method: Any


def _mask(active: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def run(method: Method, f: Callable[[jax.Array], jax.Array], z0: jax.Array, cfg: SolverConfig,
        red: SampleReduce = SampleReduce()) -> tuple[jax.Array, SolveStats]:
    """Drive `method` on the fixed-point map f from z0 (shape (B, ...)).

    Iterates are flattened to (B, N) in the accumulation dtype; f sees z's own shape
    and dtype. Each sample stops on its own: once converged or diverged it is frozen
    (its iterate never changes again) and its lowest-residual iterate is returned.
    """
    cfg.validate()
    shape, dtype = z0.shape, z0.dtype
    acc = jnp.promote_types(dtype, jnp.dtype(cfg.acc_dtype))
    batch = shape[0]

    def f_flat(zf):
        return f(zf.reshape(shape).astype(dtype)).reshape(batch, -1).astype(acc)

    def residuals(z, fz):
        fz = jnp.where(jnp.isfinite(fz), fz, jnp.inf)  # any non-finite value => infinite residual
        abs_r = red.norm(fz - z)
        abs_r = jnp.where(jnp.isnan(abs_r), jnp.inf, abs_r)
        rel_r = abs_r / (red.norm(fz) + jnp.finfo(acc).tiny)
        rel_r = jnp.where(jnp.isfinite(abs_r), rel_r, jnp.inf)
        return abs_r, rel_r

    def done(abs_r, rel_r):
        return (rel_r if cfg.stop_mode == "rel" else abs_r) <= cfg.tol

    z = z0.reshape(batch, -1).astype(acc)
    fz = f_flat(z)
    abs_r, rel_r = residuals(z, fz)
    # Fresh arrays are built "like" existing ones so that, inside shard_map, they carry the
    # same varying-axes type as the values the loop writes into them.
    zeros_i = jnp.zeros_like(abs_r, dtype=jnp.int32)
    state = _Loop(
        k=jnp.zeros((), jnp.int32), z=z, fz=fz, active=~done(abs_r, rel_r),
        best_z=z, best_abs=abs_r, best_rel=rel_r, first_res=abs_r, nstep=zeros_i,
        diverged=~jnp.isfinite(abs_r),
        trace=jnp.full_like(abs_r, jnp.nan, shape=(batch, cfg.max_iter)) if cfg.trace else None,
        method=method.init(z, fz, cfg, red))
    state = state._replace(active=state.active & ~state.diverged)

    def cond(s: _Loop):
        return (s.k < cfg.max_iter) & red.any_active(s.active)

    def body(s: _Loop):
        z_next, mstate = method.update(s.method, s.z, s.fz, s.k, cfg, red)
        z_next = _mask(s.active, z_next, s.z)
        fz_next = f_flat(z_next)
        fz_next = _mask(s.active, fz_next, s.fz)
        abs_r, rel_r = residuals(z_next, fz_next)
        score = rel_r if cfg.stop_mode == "rel" else abs_r
        best_score = s.best_rel if cfg.stop_mode == "rel" else s.best_abs
        better = s.active & (score < best_score)
        blown = s.active & (~jnp.isfinite(abs_r) | (abs_r > cfg.divergence * s.first_res))
        trace = s.trace
        if trace is not None:
            trace = trace.at[:, s.k].set(jnp.where(s.active, score, jnp.nan))
        return _Loop(
            k=s.k + 1, z=z_next, fz=fz_next,
            active=s.active & ~done(abs_r, rel_r) & ~blown,
            best_z=_mask(better, z_next, s.best_z),
            best_abs=jnp.where(better, abs_r, s.best_abs),
            best_rel=jnp.where(better, rel_r, s.best_rel),
            first_res=s.first_res,
            nstep=s.nstep + s.active.astype(jnp.int32),
            diverged=s.diverged | blown,
            trace=trace, method=mstate)

    s = lax.while_loop(cond, body, state)
    stats = SolveStats(
        nstep=s.nstep, abs_residual=s.best_abs, rel_residual=s.best_rel,
        converged=done(s.best_abs, s.best_rel), diverged=s.diverged & ~done(s.best_abs, s.best_rel),
        loop_iters=jnp.full_like(s.nstep, s.k), trace=s.trace)
    return s.best_z.reshape(shape).astype(dtype), stats
