"""Mesh, logical-axis rules, shardings and the shard_map'd equilibrium solve."""
from .config import AXES, DEFAULT_RULES, ParallelConfig
from .mesh import check_divisible, make_mesh, resolve_sizes
from .sharding import activation_spec, batch_sharding, logical_to_mesh, mesh_spec, param_shardings, state_specs
from .solve import collectives, make_solve, make_unroll, sample_reduce

__all__ = [
    "AXES", "DEFAULT_RULES", "ParallelConfig", "activation_spec", "batch_sharding", "check_divisible", "collectives",
    "logical_to_mesh", "make_mesh", "make_solve", "make_unroll", "mesh_spec", "param_shardings",
    "resolve_sizes", "sample_reduce", "state_specs",
]
