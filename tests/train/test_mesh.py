"""train/mesh.py: the trainer's door to the mesh turns bad sizes into ConfigErrors naming the numbers."""
import jax
import pytest
from flax import nnx

from deqdist.config import ConfigError, load_config
from deqdist.model import DEQTransformer
from deqdist.train.mesh import batch_sharding, build_mesh, check_layout, decode_shardings, param_shardings


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_impossible_mesh_is_a_config_error_naming_the_devices():
    with pytest.raises(ConfigError, match=r"= 3 but there are 8 devices"):
        build_mesh(_cfg("parallel.data=3", "parallel.fsdp=1", "parallel.tensor=1"))
    with pytest.raises(ConfigError, match=r"must divide the data axis size 8 \(8 devices visible\)"):
        build_mesh(_cfg("parallel.data=-1", "parallel.fsdp=1", "parallel.tensor=1", "parallel.dcn_data=3"))
    mesh = build_mesh(_cfg("parallel.data=2", "parallel.fsdp=1", "parallel.tensor=4"))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}


def _layout(cfg):
    mesh = build_mesh(cfg)
    params = nnx.state(nnx.eval_shape(lambda: DEQTransformer(cfg.model, rngs=nnx.Rngs(0))), nnx.Param)
    check_layout(cfg, mesh, nnx.to_pure_dict(params), nnx.to_pure_dict(param_shardings(params, mesh, cfg)))


def test_layout_check_names_the_array_that_does_not_split():
    _layout(_cfg("parallel.data=2", "parallel.tensor=4", "model.n_heads=4", "data.global_batch_size=8"))
    with pytest.raises(ConfigError, match=r"the token batch .* dim 0 has size 6, not divisible by the 8 devices"):
        _layout(_cfg("parallel.data=8", "parallel.tensor=1", "data.global_batch_size=6"))
    with pytest.raises(ConfigError, match=r"parameter block/wk \(64, 2, 32\) dim 1 has size 2, not divisible by the "
                                          r"4 devices of mesh axes \(tensor=4\)"):
        _layout(_cfg("parallel.data=2", "parallel.tensor=4", "model.n_heads=2", "data.global_batch_size=8"))


def test_decode_rows_are_split_only_when_the_batch_divides():
    cfg = _cfg("parallel.data=4", "parallel.fsdp=1", "parallel.tensor=2", "model.n_heads=4")
    mesh = build_mesh(cfg)
    assert decode_shardings(mesh, cfg, 8)["rows"].spec == jax.sharding.PartitionSpec(batch_sharding(mesh, cfg).spec[0])
    odd = decode_shardings(mesh, cfg, 3)
    assert odd["rows"].spec == jax.sharding.PartitionSpec(None)
    assert odd["kv"].spec[2] == "tensor"
