"""The stop rule (deqdist/solvers/base.py): converged means a fixed point on a scale fixed at
the start, for every method, stop mode, start and dtype; run-away iterates are divergence.

Rows of one batch are solved independently, so each solve carries every family of maps
from every start: f(z) = s z + c + a sin z + t tanh z with per-row, per-element s, c, a, t.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from deqdist.solvers import SampleReduce, SolverConfig, solve

METHODS = ["broyden", "anderson", "picard"]
MODES = ["rel", "abs"]
N = 8
# dtype of z0 (the dtype f computes in), the farthest start, whether float64 is needed. A far
# start in bfloat16 stays where z + c still moves z (|c| > one ulp of the start).
DTYPES = [("float32", 1e4, False), ("bfloat16", 30.0, False), ("float64", 1e6, True)]
TOL = {"float32": 1e-3, "bfloat16": 3e-2, "float64": 1e-3}


def _starts(far):
    """Near and far starts, none of them a fixed point of the maps below: (5, N)."""
    g = jax.random.normal(jax.random.PRNGKey(3), (N,))
    return jnp.stack([g, 10 * g, jnp.full(N, far), -far * jnp.abs(g) - 1, far * g])


def _families():
    """name -> (s, c, a, t), each (rows, N)."""
    kc, ka, km = jax.random.split(jax.random.PRNGKey(7), 3)
    c = jax.random.uniform(kc, (3, N), minval=0.5, maxval=1.5) * jnp.sign(jax.random.normal(km, (3, N)))
    a = jax.random.uniform(ka, (3, N), minval=-0.5, maxval=0.5) * jnp.abs(c)
    a = a.at[0].set(0.0).at[2].multiply(jnp.arange(N) % 2)  # translation; z + c + a sin z; a per-element mix
    one, zero = jnp.ones((3, N)), jnp.zeros((3, N))
    rep = jnp.stack([jnp.full(N, 2.0), jnp.full(N, -3.0), jnp.where(jnp.arange(N) % 2 == 0, 2.0, -3.0)])
    lin = jnp.linspace(-0.6, 0.6, N)[None]
    return {
        "none": (one, c, a, zero),                     # no fixed point: |f(z) - z| >= |c| / 2
        "repel": (rep, one, zero, zero),               # z* = 1 / (1 - s): -1 or 1/4
        "root0": (jnp.concatenate([lin, zero[:1]]), zero[:2], zero[:2], jnp.stack([zero[0], one[0] / 2])),
    }


def _batch(far, dtype):
    """Every (map, start) pair as a row; plus z0 = 0 for the root-0 maps. -> params, z0, family per row."""
    z0s = _starts(far)
    params, z0, fam = [], [], []
    for name, p in _families().items():
        starts = jnp.concatenate([z0s, jnp.zeros((1, N))]) if name == "root0" else z0s
        params.append([jnp.repeat(q, len(starts), axis=0) for q in p])
        z0.append(jnp.tile(starts, (len(p[0]), 1)))
        fam += [name] * (len(p[0]) * len(starts))
    s, c, a, t = (jnp.concatenate(q).astype(dtype) for q in zip(*params))
    return (s, c, a, t), jnp.concatenate(z0).astype(dtype), np.array(fam)


def _map(p):
    s, c, a, t = p
    return lambda z: s * z + c + a * jnp.sin(z) + t * jnp.tanh(z)


def _solve(f, z0, cfg, red=SampleReduce()):
    z, st = jax.jit(lambda z0: solve(f, z0, cfg, red))(z0)
    return np.asarray(z, np.float64), jax.tree.map(np.asarray, st)


@pytest.mark.parametrize("dtype,far,x64", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_converged_only_at_a_fixed_point(mode, method, dtype, far, x64):
    with jax.enable_x64(x64):
        p, z0, fam = _batch(far, dtype)
        f, tol = _map(p), TOL[dtype]
        z, st = _solve(f, z0, SolverConfig(method=method, stop_mode=mode, tol=tol, max_iter=100))
        s, c = (np.asarray(q, np.float64) for q in p[:2])
        z0d = np.asarray(z0, np.float64)
        S = np.linalg.norm(np.asarray(f(z0), np.float64) - z0d, axis=1)
        assert np.all(np.isfinite(z))

        # No fixed point: never converged, from any start; what is reported is true of the
        # returned iterate (|c + a sin z| >= |c| / 2 per element, up to bfloat16 rounding).
        no = fam == "none"
        assert not st.converged[no].any(), np.flatnonzero(st.converged & no)
        floor = np.linalg.norm(np.abs(c[no]) / 2, axis=1) * (0.25 if dtype == "bfloat16" else 0.99)
        assert np.all(st.abs_residual[no] >= floor)
        if method != "anderson":  # their iterates run away on a translation: divergence, not a stall
            assert st.diverged[no][:5].all()

        # Repelling fixed point: converged only where the returned iterate is it. Here
        # |f(z) - z| >= |z - z*|, so |z - z*| <= tol * S (rel) or tol (abs).
        rep = fam == "repel"
        err = np.linalg.norm(z[rep] - 1.0 / (1.0 - s[rep]), axis=1)
        bound = tol * (S[rep] if mode == "rel" else 1.0) * 1.05
        conv = st.converged[rep]
        assert np.all(err[conv] <= np.broadcast_to(bound, err.shape)[conv])
        if method == "picard":
            assert not conv.any() and st.diverged[rep].all()
        elif method == "broyden" and dtype != "bfloat16":
            assert conv.all(), st.abs_residual[rep]

        # Root 0: converges (rel mode included) to z = 0; z0 = 0 is exact at step 0.
        root = fam == "root0"
        assert st.converged[root].all() and not st.diverged[root].any(), st.rel_residual[root]
        assert np.all(st.nstep[root][5::6] == 0)
        zn = np.linalg.norm(z[root], axis=1)
        assert np.all(zn <= 2.5 * 1.05 * tol * (S[root] if mode == "rel" else 1.0))


@pytest.mark.parametrize("method", METHODS)
def test_sharded_sample_gives_the_same_verdicts(method):
    # One sample's features split over 4 devices: the residuals, distances and stop test
    # reduce through SampleReduce, so the verdicts and iterates match the unsharded solve.
    p, z0, fam = _batch(1e3, "float32")
    f = _map(p)
    cfg = SolverConfig(method=method, max_iter=40)
    z1, st1 = _solve(f, z0, cfg)
    mesh = jax.make_mesh((4,), ("tensor",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:4])
    red = SampleReduce(axes=("tensor",), lockstep_axes=("tensor",))
    spec = P(None, "tensor")

    def local(z0, *p):
        return solve(_map(p), z0, cfg, red)

    z4, st4 = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 5, out_specs=(spec, P())))(z0, *p)
    for k in ("converged", "diverged"):
        np.testing.assert_array_equal(np.asarray(getattr(st4, k)), getattr(st1, k), err_msg=k)
    # Iterates on z + c + a sin z wander chaotically (summation order decides where), and the
    # fixed points found may differ within the tolerance: each must meet the stop rule.
    conv = st1.converged
    assert conv.sum() >= 12  # the root-0 rows at least
    S = np.linalg.norm(np.asarray(f(z0) - z0, np.float64), axis=1)
    r4 = np.linalg.norm(np.asarray(f(jnp.asarray(z4, jnp.float32)) - z4, np.float64), axis=1)
    assert np.all(r4[conv] <= 1.01 * cfg.tol * S[conv])
    np.testing.assert_allclose(np.asarray(st4.abs_residual)[conv], r4[conv], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_far_start_on_a_contraction_still_finds_the_fixed_point(mode):
    x = jax.random.normal(jax.random.PRNGKey(6), (4, N))
    z0 = jnp.stack([jnp.zeros(N), jnp.full(N, 50.0), jnp.full(N, -300.0), 1e3 * x[3]])
    f = lambda z: 0.5 * z + x
    for method in METHODS:
        z, st = _solve(f, z0, SolverConfig(method=method, stop_mode=mode, tol=1e-4, max_iter=200))
        assert st.converged.all(), method
        scale = 1e-4 * (np.linalg.norm(np.asarray(f(z0) - z0), axis=1) if mode == "rel" else 1.0)
        # |z - z*| <= |f(z) - z| / (1 - 1/2) for this contraction.
        np.testing.assert_array_less(np.linalg.norm(z - 2 * np.asarray(x), axis=1), 2 * scale * 1.01)


def test_stats_are_true_of_the_returned_iterate_and_on_the_start_scale():
    x = jax.random.normal(jax.random.PRNGKey(8), (3, N))
    f = lambda z: jnp.tanh(0.9 * z[:, ::-1] + x)
    z0 = jnp.ones((3, N))
    z, st = _solve(f, z0, SolverConfig(method="broyden", tol=1e-5, max_iter=60, trace=True))
    r = np.linalg.norm(np.asarray(f(jnp.asarray(z, jnp.float32)) - z, np.float64), axis=1)
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
