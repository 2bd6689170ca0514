"""The block's collectives contract, before parallel/ exists.

A 2-way sequence + tensor parallel run of the block, emulated with `jax.vmap`
over a named device axis (all_gather / psum_scatter along it) and, for real,
with `jax.shard_map` on 2x2 simulated CPU devices (batch over "data", sequence
and heads/mlp over "tensor"), equals the unsharded block. Which parameter axis
is split is read from the logical names only ("heads", "mlp" -> tensor).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from deqdist.model import Collectives, DEQTransformer, block_params_and_specs
from model_presets import get_preset

TP = 2
TENSOR_NAMES = ("heads", "mlp")


def _setup(dropout, weight_norm=False):
    cfg = get_preset("tiny", dropout=dropout, weight_norm=weight_norm)
    model = DEQTransformer(cfg, rngs=nnx.Rngs(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 16), 0, 256)
    x = model.inject(tokens, deterministic=dropout == 0, key=jax.random.key(5))
    f, params = model.split_block()
    # perturb every parameter (biases are zero at init) so that e.g. adding an
    # output bias before the reduce-scatter (TP times) would be caught
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    z = jax.random.normal(jax.random.key(6), x["inj"].shape)
    _, specs = block_params_and_specs(model)
    return f, params, specs, z, x


def _shard_param(a, spec, r):
    """Device r's shard of a: split the (single) 'heads'/'mlp' axis TP ways."""
    for ax, name in enumerate(spec):
        if name in TENSOR_NAMES:
            n = a.shape[ax] // TP
            return jax.lax.slice_in_dim(a, r * n, (r + 1) * n, axis=ax)
    return a


def _stack_params(params, specs):
    return jax.tree.map(
        lambda a, s: jnp.stack([_shard_param(a, s, r) for r in range(TP)]),
        params, specs, is_leaf=lambda v: isinstance(v, P),
    )


def _seq_shards(a):
    return jnp.stack(jnp.split(a, TP, axis=1))  # (TP, B, S/TP, D)


@pytest.mark.parametrize("dropout,weight_norm", [(0.0, False), (0.3, True)])
def test_block_fake_tensor_sequence_parallel(dropout, weight_norm):
    f, params, specs, z, x = _setup(dropout, weight_norm)
    ref = f(params, z, x, Collectives())

    comms = Collectives(
        gather_seq=lambda a: jax.lax.all_gather(a, "tp", axis=1, tiled=True),
        scatter_seq=lambda a: jax.lax.psum_scatter(a, "tp", scatter_dimension=1, tiled=True),
    )
    stacked = _stack_params(params, specs)
    # the sharded weights really are smaller: heads and mlp split TP ways
    assert stacked["wq"].get_value().shape[2] == params["wq"].get_value().shape[1] // TP
    assert stacked["w1"].get_value().shape[2] == params["w1"].get_value().shape[1] // TP
    out = jax.jit(jax.vmap(functools.partial(f, comms=comms), axis_name="tp"))(
        stacked, _seq_shards(z), jax.tree.map(_seq_shards, x)
    )
    out = jnp.concatenate(list(out), axis=1)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


def test_block_shard_map_2x2():
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices")
    f, params, specs, z, x = _setup(0.2)
    ref = f(params, z, x, Collectives())

    mesh = jax.make_mesh((2, 2), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Explicit,) * 2,
                         devices=jax.devices()[:4])
    rules = {"heads": "tensor", "mlp": "tensor"}
    param_specs = jax.tree.map(
        lambda s: P(*(rules.get(n) for n in s)), specs, is_leaf=lambda v: isinstance(v, P)
    )
    act = P("data", "tensor", None)
    comms = Collectives(
        gather_seq=lambda a: jax.lax.all_gather(a, "tensor", axis=1, tiled=True),
        scatter_seq=lambda a: jax.lax.psum_scatter(a, "tensor", scatter_dimension=1, tiled=True),
    )
    sharded_f = jax.shard_map(
        functools.partial(f, comms=comms), mesh=mesh,
        in_specs=(param_specs, act, jax.tree.map(lambda _: act, x)), out_specs=act,
    )
    put = lambda a, s: jax.device_put(a, NamedSharding(mesh, s))
    params_d = jax.tree.map(put, params, param_specs)
    out = jax.jit(sharded_f)(params_d, put(z, act), jax.tree.map(lambda a: put(a, act), x))
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
