import jax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from deqdist.model import get_preset
from deqdist.parallel import (ParallelConfig, activation_spec, check_divisible, make_mesh, param_shardings,
                              state_specs)


def test_mesh_sizes_and_rest_of_devices():
    mesh = make_mesh(ParallelConfig(data=-1, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("cfg,msg", [
    (ParallelConfig(data=3, fsdp=1, tensor=2), "3\\*1\\*2 = 6 but there are 8 devices"),
    (ParallelConfig(data=-1, fsdp=3), "not divisible by 3"),
    (ParallelConfig(data=-1, tensor=-1), "at most one"),
    (ParallelConfig(data=8, dcn_data=3), "dcn_data=3 must divide"),
    (ParallelConfig(rules=(("embed", "model"),)), "unknown mesh axis"),
])
def test_bad_mesh_is_a_clear_error(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        make_mesh(cfg)


def test_dcn_factor_groups_devices_by_process():
    # One process here: a DCN factor of 1 group is the whole data axis.
    mesh = make_mesh(ParallelConfig(data=8, dcn_data=1))
    assert mesh.shape["data"] == 8
    with pytest.raises(ValueError, match="form 1 slices"):
        make_mesh(ParallelConfig(data=8, dcn_data=2))


def test_divisibility_errors_name_the_numbers():
    mesh = make_mesh(ParallelConfig(data=2, tensor=4))

    def check(name, size):
        sharding = NamedSharding(mesh, activation_spec(ParallelConfig(), name))
        check_divisible((size,), sharding, f"logical axis {name!r}")

    for name, size in (("batch", 8), ("seq", 64), ("heads", 8)):
        check(name, size)
    with pytest.raises(ValueError, match=r"logical axis 'heads' dim 0 has size 2, not divisible by the 4 devices of mesh axes \(tensor=4\)"):
        check("heads", 2)
    with pytest.raises(ValueError, match=r"'batch' dim 0 has size 3, not divisible by the 2 devices of mesh axes \(data=2, fsdp=1\)"):
        check("batch", 3)
    # Replicated dimensions and dimensions the spec does not name are not checked.
    check_divisible((3, 8, 7), NamedSharding(mesh, P(None, "tensor")), "x")


def test_param_shardings_follow_the_rule_table():
    model = get_preset("tiny", n_heads=8).create(nnx.Rngs(0))
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
