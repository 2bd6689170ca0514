"""Logical names -> mesh PartitionSpecs -> NamedShardings, from the rule table."""
import jax
from flax import nnx
from jax.sharding import PartitionSpec as P

from deqdist.model import DEQTransformer
from model_presets import get_preset
from deqdist.parallel import ParallelConfig, activation_spec, batch_sharding, make_mesh, param_shardings, state_specs
from deqdist.parallel.sharding import mesh_spec


def test_param_shardings_follow_the_rule_table():
    model = DEQTransformer(get_preset("tiny", n_heads=8), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    specs = state_specs(state, ParallelConfig())
    assert specs["block"]["wq"].get_value() == P("fsdp", "tensor", None)
    assert specs["block"]["wo"].get_value() == P("tensor", None, "fsdp")
    assert specs["block"]["w1"].get_value() == P("fsdp", "tensor")
    assert specs["embed"].get_value() == P("tensor", "fsdp")
    # A different table changes the layout without touching the model.
    rules = (("vocab", None), ("embed", None), ("heads", "data"), ("head_dim", None), ("mlp", None),
             ("batch", "data"), ("seq", None))
    specs = state_specs(state, ParallelConfig(rules=rules))
    assert specs["block"]["wq"].get_value() == P(None, "data", None)
    mesh = make_mesh(ParallelConfig(data=2, fsdp=2, tensor=2))
    sh = param_shardings(state, mesh, ParallelConfig())
    placed = jax.device_put(state, sh)
    wq = placed["block"]["wq"].get_value()
    assert wq.sharding.spec == P("fsdp", "tensor", None)
    assert wq.addressable_shards[0].data.shape == (32, 4, 8)


def test_an_axis_is_used_once_per_spec_and_dropped_axes_are_left_out():
    cfg = ParallelConfig()
    # batch -> (data, fsdp); a later name mapped to an axis already used gets nothing.
    assert mesh_spec(P("batch", "seq", None), cfg) == P(("data", "fsdp"), "tensor", None)
    assert mesh_spec(P("batch", "batch"), cfg) == P(("data", "fsdp"), None)
    assert mesh_spec(P("batch", "seq"), cfg, drop=("fsdp",)) == P("data", "tensor")
    assert mesh_spec(None, cfg) == P()
    assert activation_spec(cfg, "batch", None) == batch_sharding(make_mesh(cfg), cfg).spec
