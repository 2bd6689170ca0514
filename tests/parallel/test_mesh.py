import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from deqdist.parallel import ParallelConfig, activation_spec, check_divisible, make_mesh


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

