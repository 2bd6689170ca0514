"""The stop rule (deqdist/solvers/base.py): converged means a fixed point on a scale fixed at
the start, for every method, stop mode, start and dtype; run-away iterates are divergence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqdist.solvers import SolverConfig, solve

METHODS = ["broyden", "anderson", "picard"]
MODES = ["rel", "abs"]
N = 8
# dtype of z0 (what f computes in), the farthest start, whether float64 is needed. A far
# start in bfloat16 stays where z + c still moves z (|c| > one ulp of the start).
DTYPES = [("float32", 1e4, False), ("bfloat16", 30.0, False), ("float64", 1e6, True)]


def _starts(far, key):
    """Near and far starts, one row each: (6, N)."""
    g = jax.random.normal(key, (N,))
    return jnp.stack([jnp.zeros(N), g, 10 * g, jnp.full(N, far), -far * jnp.abs(g) - 1, far * g])


def _run(f, z0, method, mode, dtype, **kw):
    cfg = SolverConfig(method=method, stop_mode=mode, tol=kw.pop("tol", 1e-3), max_iter=kw.pop("max_iter", 150), **kw)
    z, st = jax.jit(lambda z0: solve(f, z0, cfg))(z0.astype(dtype))
    return z, jax.tree.map(np.asarray, st)


def _no_fixed_point_maps(dtype):
    """Per row: z + c (translation), z + c + a sin z with |a| <= |c| / 2, and per-element mixes."""
    kc, ka, km = jax.random.split(jax.random.PRNGKey(7), 3)
    c = jax.random.uniform(kc, (3, N), minval=0.5, maxval=1.5) * jnp.sign(jax.random.normal(km, (3, N)))
    a = jax.random.uniform(ka, (3, N), minval=-0.5, maxval=0.5) * jnp.abs(c)
    a = a.at[0].set(0.0).at[2].multiply(jnp.arange(N) % 2)   # row 0: translation, row 2: mixed
    return c.astype(dtype), a.astype(dtype)


@pytest.mark.parametrize("dtype,far,x64", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_maps_without_fixed_point_never_converge(method, dtype, far, x64):
    with jax.enable_x64(x64):
        c, a = _no_fixed_point_maps(dtype)
        z0 = _starts(far, jax.random.PRNGKey(3))
        # Every (map, start) pair is its own sample: rows are solved independently.
        cb = jnp.repeat(c, len(z0), axis=0)
        ab = jnp.repeat(a, len(z0), axis=0)
        z0 = jnp.tile(z0, (len(c), 1))
        f = lambda z: z + cb + ab * jnp.sin(z)
        for mode in MODES:
            z, st = _run(f, z0, method, mode, dtype)
            assert not st.converged.any(), (mode, np.flatnonzero(st.converged))
            assert np.all(np.isfinite(np.asarray(z, np.float64)))
            # What is reported is true of the returned iterate: |c + a sin z| >= |c| / 2 per element.
            floor = np.linalg.norm(np.abs(np.asarray(cb, np.float64)) / 2, axis=1)
            assert np.all(st.abs_residual >= floor * (0.25 if dtype == "bfloat16" else 0.99))
            # Broyden's and Picard's iterates run away on a translation: divergence, not a stall.
            if method != "anderson":
                assert st.diverged[: len(z0) // 3].all()


@pytest.mark.parametrize("dtype,far,x64", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_repelling_fixed_point_is_converged_only_at_the_fixed_point(method, dtype, far, x64):
    with jax.enable_x64(x64):
        # Per element z -> 2z + 1 (z* = -1) or z -> -3z + 1 (z* = 1/4), rows of both and a mix.
        slope = jnp.stack([jnp.full(N, 2.0), jnp.full(N, -3.0), jnp.where(jnp.arange(N) % 2 == 0, 2.0, -3.0)])
        zstar = 1.0 / (1.0 - slope)
        z0 = _starts(min(far, 100.0), jax.random.PRNGKey(4))[1:]   # z0 = 0 is no special point here
        sb = jnp.repeat(slope, len(z0), axis=0).astype(dtype)
        zs = np.repeat(np.asarray(zstar, np.float64), len(z0), axis=0)
        z0 = jnp.tile(z0, (len(slope), 1))
        f = lambda z: sb * z + 1.0
        for mode in MODES:
            tol = 3e-2 if dtype == "bfloat16" else 1e-3
            z, st = _run(f, z0, method, mode, dtype, tol=tol)
            # Converged means: the returned iterate is the fixed point. Here |f(z) - z| >= |z - z*|,
            # so |z - z*| <= tol * S (S = |f(z0) - z0|, rel) or tol (abs).
            err = np.linalg.norm(np.asarray(z, np.float64) - zs, axis=1)
            z0d = np.asarray(z0.astype(dtype), np.float64)
            s = np.linalg.norm((np.asarray(sb, np.float64) - 1) * z0d + 1, axis=1) if mode == "rel" else 1.0
            bound = np.broadcast_to(tol * s * 1.05, err.shape)
            assert np.all(err[st.converged] <= bound[st.converged])
            if method == "picard":
                assert not st.converged.any() and st.diverged.all()
            elif method == "broyden" and dtype != "bfloat16":
                assert st.converged.all(), (mode, st.abs_residual)


@pytest.mark.parametrize("dtype,far,x64", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_maps_with_root_zero_converge_in_rel_mode(method, dtype, far, x64):
    with jax.enable_x64(x64):
        d = jnp.linspace(-0.6, 0.6, N)
        z0 = _starts(far, jax.random.PRNGKey(5))
        # Rows alternate a linear contraction and a nonlinear one, both with f(0) = 0.
        lin = (jnp.arange(len(z0)) % 2 == 0)[:, None]
        f = lambda z: jnp.where(lin, d * z, 0.5 * jnp.tanh(z)).astype(z.dtype)
        tol = 2e-2 if dtype == "bfloat16" else 1e-4
        z, st = _run(f, z0, method, "rel", dtype, tol=tol)
        assert st.converged.all() and not st.diverged.any(), st.rel_residual
        assert st.nstep[0] == 0   # z0 = 0 is exact
        z64, s0 = np.asarray(z, np.float64), np.abs(np.asarray(z0.astype(dtype), np.float64))
        assert np.all(np.linalg.norm(z64, axis=1) <= 4 * tol * np.linalg.norm(s0, axis=1) + 1e-30)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_far_start_on_a_contraction_still_finds_the_fixed_point(method, mode):
    x = jax.random.normal(jax.random.PRNGKey(6), (4, N))
    z0 = jnp.stack([jnp.zeros(N), jnp.full(N, 50.0), jnp.full(N, -300.0), 1e3 * x[3]])
    f = lambda z: 0.5 * z + x
    z, st = _run(f, z0, method, mode, "float32", tol=1e-4, max_iter=200)
    assert st.converged.all()
    scale = 1e-4 * (np.linalg.norm(np.asarray(f(z0) - z0), axis=1) if mode == "rel" else 1.0)
    # |z - z*| <= |f(z) - z| / (1 - 1/2) for this contraction.
    np.testing.assert_array_less(np.linalg.norm(np.asarray(z - 2 * x), axis=1), 2 * scale * 1.01)


def test_stats_are_true_of_the_returned_iterate_and_on_the_start_scale():
    x = jax.random.normal(jax.random.PRNGKey(8), (3, N))
    f = lambda z: jnp.tanh(0.9 * z[:, ::-1] + x)
    z0 = jnp.ones((3, N))
    z, st = _run(f, z0, "broyden", "rel", "float32", tol=1e-5, max_iter=60, trace=True)
    r = np.linalg.norm(np.asarray(f(z) - z, np.float64), axis=1)
    s = np.linalg.norm(np.asarray(f(z0) - z0, np.float64), axis=1)
    np.testing.assert_allclose(st.abs_residual, r, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(st.rel_residual, r / s, rtol=1e-3, atol=1e-6)
    # The returned iterate is the best one on that scale among those the trace shows.
    np.testing.assert_allclose(st.rel_residual, np.minimum(1.0, np.nanmin(st.trace, axis=1)), rtol=1e-6)


def test_a_known_scale_sets_the_tolerance_when_larger_than_the_first_residual():
    # The adjoint-like map g -> -0.1 g + b started at g0 = b: its first residual is 0.1 |b|,
    # its scale |b| (= |f(0)|); given that scale, the tolerance is relative to |b|.
    b = jax.random.normal(jax.random.PRNGKey(9), (2, N))
    f = lambda g: -0.1 * g + b
    cfg = SolverConfig(method="picard", tol=1e-3, max_iter=50)
    _, plain = solve(f, b, cfg)
    nb = jnp.linalg.norm(b, axis=1)
    _, scaled = solve(f, b, cfg, scale=nb)
    assert bool(plain.converged.all()) and bool(scaled.converged.all())
    assert int(scaled.nstep.max()) < int(plain.nstep.max())
    np.testing.assert_allclose(np.asarray(scaled.rel_residual), np.asarray(scaled.abs_residual / nb), rtol=1e-5)
