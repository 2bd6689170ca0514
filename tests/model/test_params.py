"""Every parameter carries logical axis names; modes share one parameter tree."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from deqdist.model import LOGICAL_AXES, DEQTransformer, SolveHooks, block_params_and_specs, lm_loss, logical_specs
from model_presets import get_preset


def _flat(state):
    return {"/".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(state)}


def test_every_param_has_logical_names():
    # untied head + weight norm: every kind of parameter exists
    model = DEQTransformer(get_preset("tiny", tie_embeddings=False, weight_norm=True), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    specs = logical_specs(model)
    arrays, spec_leaves = _flat(state), _flat(specs)
    assert arrays.keys() == spec_leaves.keys()
    for path, spec in spec_leaves.items():
        assert isinstance(spec, P), path
        assert len(spec) == arrays[path].ndim, path
        assert all(n is not None and n in LOGICAL_AXES for n in spec), (path, spec)
    expected = {
        "embed": P("vocab", "embed"),
        "lm_head": P("embed", "vocab"),
        "block/wq": P("embed", "heads", "head_dim"),
        "block/wk": P("embed", "heads", "head_dim"),
        "block/wv": P("embed", "heads", "head_dim"),
        "block/wo": P("heads", "head_dim", "embed"),
        "block/w1": P("embed", "mlp"),
        "block/b1": P("mlp"),
        "block/w2": P("mlp", "embed"),
        "block/bo": P("embed"),
        "block/ln_out/scale": P("embed"),
        "ln_f/bias": P("embed"),
        "block/wn/wq": P("heads", "head_dim"),
        "block/wn/w1": P("mlp"),
    }
    for path, spec in expected.items():
        assert spec_leaves[path] == spec, path


def test_block_params_and_specs_match():
    model = DEQTransformer(get_preset("tiny"), rngs=nnx.Rngs(0))
    state, specs = block_params_and_specs(model)
    assert jax.tree.structure(nnx.get_partition_spec(state), is_leaf=lambda x: isinstance(x, P)) == \
        jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, P))
    assert specs["w1"].get_value() == P("embed", "mlp")


def test_modes_share_parameter_tree(tiny_model, tokens):
    before = jax.tree.map(np.asarray, nnx.state(tiny_model))
    graph_before = nnx.graphdef(tiny_model)
    tiny_model(tokens, SolveHooks(mode="explicit", n_unroll=2))
    assert nnx.graphdef(tiny_model) == graph_before
    after = nnx.state(tiny_model)
    assert jax.tree.structure(before) == jax.tree.structure(after)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, after))


def test_lm_loss_uniform():
    logits = jnp.zeros((2, 3, 256))
    targets = jnp.zeros((2, 3), jnp.int32)
    np.testing.assert_allclose(lm_loss(logits, targets), np.log(256), rtol=1e-6)
    mask = jnp.array([[1, 0, 0], [0, 0, 0]])
    logits = logits.at[0, 0, 0].set(100.0)
    np.testing.assert_allclose(lm_loss(logits, targets, mask), 0.0, atol=1e-5)
