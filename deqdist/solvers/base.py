"""What every root finder shares: its config, its stats, per-sample reductions, and the loop.

A solver method only says how to propose the next iterate from the current one
(`Method.init` / `Method.update`). `run` owns everything else, so per-sample
stopping, freezing, best-iterate tracking and divergence handling are written once.

The stop rule (every method, both stop modes; all norms are per sample, over all
of its features, through `SampleReduce`, so sharded and unsharded solves agree):

* r(z) = |f(z) - z|, computed in the accumulation dtype; a non-finite f(z) makes
  r infinite.
* The problem's scale S is fixed once, before the first step, and never looks at
  a later iterate: S = max(|f(z0) - z0|, scale), where `scale` is an optional
  per-sample reference the caller knows (for f(z) = A z + b it is |b|; the
  adjoint solve of `deq` passes |dL/dz*|). A run-away iterate therefore cannot
  loosen the test, which |f(z)| as the scale allowed: on z -> z + c, |f(z)|
  grows with z while r stays |c|. A far start does not loosen it for maps whose
  residual is bounded (translations and their bounded perturbations); it does
  for maps whose residual grows with |z0| (z -> z + 1 + z^2 from z0 = 1e3): a
  relative tolerance is relative to where the solve starts.
* Converged: r(z) <= tol * S (`stop_mode="rel"`) or r(z) <= tol (`"abs"`), at
  an iterate that is finite and within reach (below). A map whose root is 0
  (f(0) = 0) has S = |f(z0) - z0| > 0 from any z0 != 0, so it converges in rel
  mode; z0 = 0 is then already exact (r = 0 <= tol * 0).
* Diverged (the sample stops, its best iterate is kept): r(z) is not finite, or
  r(z) > divergence * S, or the iterate runs away from its start without a
  matching change in the residual:
      |z - z0| > min(REACH * S + divergence * |g(z) - g(z0)|,  S / (4 eps)),
  g(z) = f(z) - z, eps the machine epsilon of the dtype f computes in. For an
  affine map with a fixed point, g(z) - g(z0) = (A - I)(z - z0), so every
  iterate of every method (Broyden's overshoots included) satisfies
  |z - z0| <= |(I - A)^-1| |g(z) - g(z0)|: only maps with |(I - A)^-1| beyond
  `divergence` (or their nonlinear kin), or with no fixed point, cross the
  first bound. A translation's residual never changes, so it is stopped after
  REACH * S. The second bound keeps the iterate's own rounding in f (~eps |z|)
  well below S, so a rounded residual cannot pass for a small one; it bites in
  bfloat16 (32 S). A start z0 with eps |z0| >= S is already in that rounding.
* The iterate returned is the one with the lowest r among those tested that were
  within reach, i.e. the lowest on the same fixed scale S, so it is the one the
  converged flag speaks about. Stats report r (`abs_residual`) and r / S
  (`rel_residual`) of that iterate.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax

METHODS = ("broyden", "anderson", "picard")
STOP_MODES = ("rel", "abs")
# Distance from z0, in units of S, that an iterate may cover with no change in its residual
# (the first step alone covers S); beyond it, movement must be matched by the residual.
REACH = 10.0


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
    # A sample is stopped and reported diverged when its residual exceeds divergence * S,
    # or its iterate runs from z0 without a matching change in residual (module docstring).
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
        if not self.divergence > 1:
            raise ValueError(f"solver divergence must be > 1, got {self.divergence}")
        if self.memory < 1 or self.anderson_m < 1:
            raise ValueError("solver memory and anderson_m must be >= 1")
        return self


class SolveStats(NamedTuple):
    """Per-sample results of one solve; all arrays, shape (B,) (trace: (B, max_iter) or None).

    abs_residual = |f(z) - z| and rel_residual = abs_residual / S at the returned z (S: the
    problem's scale fixed at the start, see the module docstring); trace holds the stop
    test's value (rel: r / S, abs: r) of every iterate."""

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
    def init(self, z: jax.Array, fz: jax.Array, cfg: SolverConfig, reduce: "SampleReduce") -> Any: ...

    def update(self, state: Any, z: jax.Array, fz: jax.Array, k: jax.Array,
               cfg: SolverConfig, reduce: SampleReduce) -> tuple[jax.Array, Any]:
        """Given iterate z (B, N) and f(z), return the next iterate to evaluate."""
        ...


class _Loop(NamedTuple):
    k: jax.Array
    z: jax.Array
    fz: jax.Array
    active: jax.Array
    best_z: jax.Array
    best_r: jax.Array
    nstep: jax.Array
    diverged: jax.Array
    trace: jax.Array | None
    method: Any


def _mask(active: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


class _Problem(NamedTuple):
    """What the loop knows before its first step and never changes: the flattened map, the start,
    its residual and the fixed scale S of the stop rule (module docstring)."""

    f: Callable[[jax.Array], jax.Array]  # (B, N) in the accumulation dtype -> f of it, same
    shape: tuple[int, ...]
    dtype: Any
    z0: jax.Array
    fz0: jax.Array
    g0: jax.Array  # f(z0) - z0
    r0: jax.Array
    s_ref: jax.Array
    tol_r: jax.Array
    max_reach: float
    cfg: SolverConfig
    reduce: SampleReduce


def _measure(z0: jax.Array, g0: jax.Array, reduce: SampleReduce, z: jax.Array, fz: jax.Array):
    """(|f(z) - z|, |z - z0|, |g(z) - g(z0)|) per sample, g(z) = f(z) - z, in one reduction."""
    fz = jnp.where(jnp.isfinite(fz), fz, jnp.inf)  # any non-finite value => infinite residual
    g, d = fz - z, z - z0
    sq = reduce.psum(jnp.stack([jnp.sum(a * a, axis=1) for a in (g, d, g - g0)]))
    r, dist, dg = jnp.sqrt(sq)
    return jnp.where(jnp.isnan(r), jnp.inf, r), dist, dg


def _problem(f, z0, cfg: SolverConfig, reduce: SampleReduce, scale) -> _Problem:
    """Flatten the map to (B, N) in the accumulation dtype, evaluate it at z0 and fix S."""
    shape, dtype = z0.shape, z0.dtype
    acc = jnp.promote_types(dtype, jnp.dtype(cfg.acc_dtype))

    def f_flat(zf):
        return f(zf.reshape(shape).astype(dtype)).reshape(shape[0], -1).astype(acc)

    z_start = z0.reshape(shape[0], -1).astype(acc)
    fz = f_flat(z_start)
    g_start = fz - z_start
    r0, _, _ = _measure(z_start, g_start, reduce, z_start, fz)
    s_ref = r0 if scale is None else jnp.maximum(r0, scale.astype(acc))
    tol_r = cfg.tol * (s_ref if cfg.stop_mode == "rel" else jnp.ones_like(s_ref))
    return _Problem(f_flat, shape, dtype, z_start, fz, g_start, r0, s_ref, tol_r,
                    1.0 / (4.0 * float(jnp.finfo(dtype).eps)), cfg, reduce)


def _done(p: _Problem, r: jax.Array) -> jax.Array:
    return jnp.isfinite(r) & (r <= p.tol_r)


def _relative(p: _Problem, r: jax.Array) -> jax.Array:
    return jnp.where(r == 0, 0.0, r / p.s_ref)


def _init(method: Method, p: _Problem) -> _Loop:
    # Fresh arrays are built "like" existing ones so that, inside shard_map, they carry the
    # same varying-axes type as the values the loop writes into them.
    diverged = ~jnp.isfinite(p.r0)
    trace = jnp.full_like(p.r0, jnp.nan, shape=(p.shape[0], p.cfg.max_iter)) if p.cfg.trace else None
    return _Loop(k=jnp.zeros((), jnp.int32), z=p.z0, fz=p.fz0, active=~_done(p, p.r0) & ~diverged,
                 best_z=p.z0, best_r=p.r0, nstep=jnp.zeros_like(p.r0, dtype=jnp.int32), diverged=diverged,
                 trace=trace, method=method.init(p.z0, p.fz0, p.cfg, p.reduce))


def _step(method: Method, p: _Problem, s: _Loop) -> _Loop:
    """One iteration: propose, evaluate (frozen samples keep their iterate), test, keep the best."""
    cfg = p.cfg
    z_next, mstate = method.update(s.method, s.z, s.fz, s.k, cfg, p.reduce)
    z_next = _mask(s.active, z_next, s.z)
    fz_next = _mask(s.active, p.f(z_next), s.fz)
    r, dist, dg = _measure(p.z0, p.g0, p.reduce, z_next, fz_next)
    ran_away = dist > jnp.minimum(REACH * p.s_ref + cfg.divergence * dg, p.max_reach * p.s_ref)
    blown = s.active & (~jnp.isfinite(r) | (r > cfg.divergence * p.s_ref) | ran_away)
    better = s.active & ~blown & (r < s.best_r)
    trace = s.trace
    if trace is not None:
        score = _relative(p, r) if cfg.stop_mode == "rel" else r
        trace = trace.at[:, s.k].set(jnp.where(s.active, score, jnp.nan))
    return _Loop(k=s.k + 1, z=z_next, fz=fz_next, active=s.active & ~blown & ~_done(p, r),
                 best_z=_mask(better, z_next, s.best_z), best_r=jnp.where(better, r, s.best_r),
                 nstep=s.nstep + s.active.astype(jnp.int32), diverged=s.diverged | blown,
                 trace=trace, method=mstate)


def _running(p: _Problem, s: _Loop) -> jax.Array:
    """Terminate when max_iter is reached or no sample (over the lockstep axes) is still active."""
    return (s.k < p.cfg.max_iter) & p.reduce.any_active(s.active)


def _finish(p: _Problem, s: _Loop) -> tuple[jax.Array, SolveStats]:
    converged = _done(p, s.best_r)
    stats = SolveStats(
        nstep=s.nstep, abs_residual=s.best_r, rel_residual=_relative(p, s.best_r),
        converged=converged, diverged=s.diverged & ~converged,
        loop_iters=jnp.full_like(s.nstep, s.k), trace=s.trace)
    return s.best_z.reshape(p.shape).astype(p.dtype), stats


def run(method: Method, f: Callable[[jax.Array], jax.Array], z0: jax.Array, cfg: SolverConfig,
        reduce: SampleReduce = SampleReduce(), scale: jax.Array | None = None) -> tuple[jax.Array, SolveStats]:
    """Drive `method` on the fixed-point map f from z0 (shape (B, ...)).

    Iterates are flattened to (B, N) in the accumulation dtype; f sees z's own shape
    and dtype. Each sample stops on its own: once converged or diverged it is frozen
    (its iterate never changes again) and its best iterate is returned. `scale` (B,):
    optional known scale of each sample's problem (module docstring).

    The loop is init, step and terminate, each a pure function of the problem and the
    loop state (`_init`, `_step`, `_running`); `_finish` turns the final state into stats.
    """
    cfg.validate()
    p = _problem(f, z0, cfg, reduce, scale)
    s = lax.while_loop(functools.partial(_running, p), functools.partial(_step, method, p), _init(method, p))
    return _finish(p, s)
