"""Dot FLOPs from a jaxpr: every scan trip counted, a while loop once, a named scope filters."""
import jax
import jax.numpy as jnp
from jax import lax

from deqdist.parallel.flops import dot_flops

ONE = 2 * 4 * 16 * 16  # one (4,16) @ (16,16) product
X, W = jnp.ones((4, 16)), jnp.ones((16, 16))


def _scan(length):
    def f(x, w):
        def body(c, _):
            with jax.named_scope("inner"):
                return jnp.tanh(c @ w), None

        c, _ = lax.scan(jax.checkpoint(body), x, None, length=length)
        return (c @ w).sum()  # one product outside the scope

    return f


def test_every_trip_of_a_scan_counts_and_a_scope_filters():
    for length in (3, 7):
        jaxpr = jax.make_jaxpr(_scan(length))(X, W)
        assert dot_flops(jaxpr) == ONE * (length + 1)
        assert dot_flops(jaxpr, "inner") == ONE * length


def test_the_gradient_counts_the_transposed_and_rematerialised_products():
    # Per trip: the forward, its rematerialisation, and the two products of the transpose (d c, d w).
    jaxpr = jax.make_jaxpr(jax.grad(_scan(5), argnums=1))(X, W)
    assert dot_flops(jaxpr, "inner") == ONE * 5 * 4


def test_a_while_loop_counts_one_iteration():
    jaxpr = jax.make_jaxpr(lambda x, w: lax.while_loop(lambda c: c.sum() < 1e6, lambda c: c @ w, x))(X, W)
    assert dot_flops(jaxpr) == ONE
