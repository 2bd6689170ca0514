import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqdist.solvers import SolverConfig, solve
from maps import spectral_scaled, tanh_map

METHODS = ["broyden", "anderson", "picard"]


def _problem(seed=0, B=4, S=8, d=32, radius=0.7, symmetric=False, dtype=jnp.float32, inj=1.0):
    params, f = tanh_map(seed, d, radius, symmetric, dtype, inj)
    x = jax.random.normal(jax.random.PRNGKey(seed + 100), (B, S, d)).astype(dtype)
    return (lambda z: f(params, z, x)), x


def _residual(fz, z, z0):
    """|f(z) - z| / |f(z0) - z0|: the relative residual on the problem's scale at the start."""
    def norm(z):
        return np.linalg.norm(np.asarray(fz(z) - z, np.float64).reshape(len(z), -1), axis=1)
    return norm(z) / norm(z0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_reaches_tol_and_reports_true_residual(method, seed):
    fz, x = _problem(seed)
    cfg = SolverConfig(method=method, max_iter=100, tol=1e-5)
    z, st = jax.jit(lambda z0: solve(fz, z0, cfg))(jnp.zeros_like(x))
    assert bool(st.converged.all()) and not bool(st.diverged.any())
    true = _residual(fz, z, jnp.zeros_like(x))
    assert np.all(true <= 1e-5 * 1.01)
    np.testing.assert_allclose(true, np.asarray(st.rel_residual), rtol=1e-2, atol=1e-7)
    # Same fixed point as a long plain iteration.
    zr = jnp.zeros_like(x)
    for _ in range(200):
        zr = fz(zr)
    np.testing.assert_allclose(np.asarray(z), np.asarray(zr), atol=1e-4)


def test_accelerated_need_fewer_evaluations_on_slow_map():
    fz, x = _problem(3, B=4, S=16, d=64, radius=0.9, symmetric=True, inj=0.1)
    steps = {}
    for m in METHODS:
        z, st = solve(fz, jnp.zeros_like(x), SolverConfig(method=m, max_iter=300, tol=1e-4))
        assert bool(st.converged.all()), m
        steps[m] = int(st.nstep.max())
    assert steps["broyden"] < steps["picard"] and steps["anderson"] < steps["picard"], steps


@pytest.mark.parametrize("method", METHODS)
def test_exploding_map_is_flagged_and_finite(method):
    # g(z) = f(z) - z = 1 + z^2 has no root; the plain iteration blows up to inf.
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 16))
    fz = lambda z: z + 1.0 + (z + x) ** 2
    z, st = solve(fz, jnp.zeros_like(x), SolverConfig(method=method, max_iter=60, tol=1e-6))
    assert not bool(st.converged.any())
    assert bool(jnp.all(jnp.isfinite(z)))
    if method == "picard":
        assert bool(st.diverged.all())


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_stopping_freezes_easy_samples(method):
    # Samples 0, 1 contract fast (scaled input), 2, 3 slowly: a per-sample radius via scaling.
    d = 32
    W = spectral_scaled(jax.random.PRNGKey(0), d, 0.95, symmetric=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, d))
    scale = jnp.array([0.05, 0.05, 1.0, 1.0])[:, None, None]
    fz = lambda z: jnp.tanh(jnp.einsum("bd,bde->be", z, scale * W[None]) + x)
    short = SolverConfig(method=method, max_iter=15, tol=1e-5, trace=True)
    long = SolverConfig(method=method, max_iter=80, tol=1e-5, trace=True)
    z1, s1 = solve(fz, jnp.zeros_like(x), short)
    z2, s2 = solve(fz, jnp.zeros_like(x), long)
    easy = np.asarray(s2.nstep[:2])
    assert np.all(easy < np.asarray(s2.nstep[2:]).min())
    assert bool(s1.converged[:2].all())
    # The easy samples' answer does not change while the hard ones keep iterating.
    np.testing.assert_array_equal(np.asarray(z1[:2]), np.asarray(z2[:2]))
    tr = np.asarray(s2.trace)
    assert np.all(np.isnan(tr[:2, easy.max():]))


def test_broyden_matches_dense_good_broyden_float64():
    with jax.enable_x64(True):
        d = 12
        W = spectral_scaled(jax.random.PRNGKey(0), d, 0.8, dtype=jnp.float64)
        x = jax.random.normal(jax.random.PRNGKey(1), (1, d), jnp.float64)
        fz = lambda z: jnp.tanh(z @ W + x)
        # Reference: dense inverse-Jacobian good Broyden on g(z) = f(z) - z, H0 = -I.
        z = np.zeros(d)
        g = np.asarray(fz(z[None]))[0] - z
        H = -np.eye(d)
        g0 = np.linalg.norm(g)
        ref = [1.0]
        for _ in range(8):
            dz = -H @ g
            zn = z + dz
            gn = np.asarray(fz(zn[None]))[0] - zn
            dg = gn - g
            H = H + np.outer(dz - H @ dg, dz @ H) / (dz @ H @ dg)
            z, g = zn, gn
            ref.append(np.linalg.norm(g) / g0)
        _, st = solve(fz, jnp.zeros((1, d)), SolverConfig(method="broyden", max_iter=8, tol=1e-300, trace=True))
        np.testing.assert_allclose(np.asarray(st.trace[0]), ref[1:], rtol=1e-6)


def test_broyden_ring_buffer_still_converges():
    fz, x = _problem(5, radius=0.9, symmetric=True, inj=0.1)
    z, st = solve(fz, jnp.zeros_like(x), SolverConfig(method="broyden", memory=4, max_iter=200, tol=1e-5))
    assert bool(st.converged.all())


@pytest.mark.parametrize("method", METHODS)
def test_dtypes_vmap_jit(method):
    cfg = SolverConfig(method=method, max_iter=60, tol=1e-2)
    fz, x = _problem(2, dtype=jnp.bfloat16)
    z, st = jax.jit(lambda z0: solve(fz, z0, cfg))(jnp.zeros_like(x))
    assert z.dtype == jnp.bfloat16 and bool(st.converged.all())
    with jax.enable_x64(True):
        fz64, x64 = _problem(2, dtype=jnp.float64)
        z64, st64 = solve(fz64, jnp.zeros_like(x64), SolverConfig(method=method, max_iter=200, tol=1e-12))
        assert z64.dtype == jnp.float64 and bool(st64.converged.all())
        assert float(st64.rel_residual.max()) <= 1e-12
    # vmap over an extra leading axis of independent problems.
    fz, x = _problem(4)
    xs = jnp.stack([x, 2 * x])
    params, f = tanh_map(4, 32)
    batched = jax.vmap(lambda x: solve(lambda z: f(params, z, x), jnp.zeros_like(x), cfg)[0])(xs)
    single = solve(lambda z: f(params, z, xs[1]), jnp.zeros_like(x), cfg)[0]
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(single), atol=1e-5)


def test_abs_stop_mode_and_bad_config():
    fz, x = _problem(0)
    _, st = solve(fz, jnp.zeros_like(x), SolverConfig(stop_mode="abs", tol=1e-4, max_iter=100))
    assert float(st.abs_residual.max()) <= 1e-4
    with pytest.raises(ValueError, match="unknown"):
        solve(fz, x, SolverConfig(method="newton"))


def test_lowest_residual_iterate_is_returned():
    # On a map with no fixed point the plain iteration only gets worse: the best iterate is z0.
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 16))
    fz = lambda z: z + 1.0 + (z + x) ** 2
    z0 = jnp.zeros_like(x)
    z, st = solve(fz, z0, SolverConfig(method="picard", max_iter=20, tol=1e-6, stop_mode="abs"))
    np.testing.assert_array_equal(np.asarray(z), np.asarray(z0))
    np.testing.assert_allclose(np.asarray(st.abs_residual), np.linalg.norm(np.asarray(fz(z0) - z0), axis=1), rtol=1e-6)


def test_anderson_survives_a_rank_deficient_history():
    # f(z) = 0.9999 z + c moves every sample along one direction: all residuals G_i are
    # parallel, so the Anderson normal equations are singular without the ridge.
    c = jax.random.normal(jax.random.PRNGKey(2), (2, 32))
    fz = lambda z: 0.9999 * z + c
    cfg = SolverConfig(method="anderson", anderson_m=5, max_iter=50, tol=2e-2, stop_mode="abs")
    z, st = solve(fz, jnp.zeros_like(c), cfg)
    assert bool(jnp.all(jnp.isfinite(z))) and not bool(st.diverged.any())
    assert bool(st.converged.all()) and int(st.nstep.max()) < 10  # Picard would need ~1e5 steps
    np.testing.assert_allclose(np.asarray(z), np.asarray(c / 1e-4), rtol=1e-2)
