import jax
import jax.numpy as jnp
import numpy as np

from deqdist.regularize import hutchinson_jac_fro2, spectral_radius
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
