import jax
import jax.numpy as jnp
import numpy as np

from deqdist.regularize import hutchinson_jac_fro2, jacobian_penalty, spectral_radius
from maps import spectral_scaled


def test_hutchinson_estimates_frobenius_norm_and_is_differentiable():
    W = jax.random.normal(jax.random.PRNGKey(0), (16, 16)) / 4
    z = jnp.zeros((3, 16))
    est = hutchinson_jac_fro2(lambda z: z @ W, z, jax.random.PRNGKey(1), n_samples=2000)
    np.testing.assert_allclose(np.asarray(est), float(jnp.sum(W ** 2)), rtol=0.05)
    g = jax.grad(lambda W: hutchinson_jac_fro2(lambda z: z @ W, z, jax.random.PRNGKey(1), 2000).mean())(W)
    # d/dW ||W||_F^2 = 2W: compare in norm, the per-entry noise of a stochastic estimate is large.
    assert float(jnp.linalg.norm(g - 2 * W) / jnp.linalg.norm(2 * W)) < 0.1


def test_power_method_finds_spectral_radius():
    W = spectral_scaled(jax.random.PRNGKey(2), 24, 0.9, symmetric=True)
    z = jnp.zeros((2, 24))
    rho = spectral_radius(lambda z: z @ W, z, jax.random.PRNGKey(3), n_iter=200)
    np.testing.assert_allclose(np.asarray(rho), 0.9, rtol=1e-2)


def test_jacobian_penalty_gradient_matches_finite_differences():
    """The trainer's Jacobian term, weight * max(Hutchinson ||J||_F^2 / d - target, 0) with a
    fixed probe, differentiated through the vjp-built estimate, against central differences
    in float64: on the active side of the hinge and (zero gradient) below the target."""
    with jax.enable_x64(True):
        d = 6
        W = jax.random.normal(jax.random.PRNGKey(4), (d, d), jnp.float64) / 2
        z = jax.random.normal(jax.random.PRNGKey(5), (2, d), jnp.float64)
        key = jax.random.PRNGKey(6)

        @jax.jit
        def term(W, target):
            fro2 = hutchinson_jac_fro2(lambda z: jnp.tanh(z @ W), z, key, n_samples=3)
            return jacobian_penalty(jnp.mean(fro2) / d, 0.7, target)

        value = float(term(W, 0.0))
        for target, active in ((0.5 * value / 0.7, True), (2 * value / 0.7, False)):
            g = np.asarray(jax.jit(jax.grad(term))(W, target))
            fd = np.zeros_like(g)
            eps = 1e-6
            for i in range(d):
                for j in range(d):
                    e = jnp.zeros_like(W).at[i, j].set(eps)
                    fd[i, j] = (float(term(W + e, target)) - float(term(W - e, target))) / (2 * eps)
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
            assert (np.abs(g).max() > 1e-3) == active
