"""The equilibrium solve under `jax.shard_map`, with the solver state sharded like z.

Inside the shard_map each device holds z, x and therefore every solver buffer
(Broyden's steps, Anderson's history) for its own batch rows and its own slice of
the sequence: batch over the `batch` rule's axes, sequence over the `seq` rule's
axis. The block gets Megatron-style sequence-parallel collectives over that axis;
solver inner products psum over it, so the stop test, built from them, is the same
on the devices that split a sample and they iterate together. Data/fsdp replicas
exchange nothing inside the loop and each stops when its own samples have converged
(`parallel.lockstep: global` makes every device run the global maximum instead).
Parameters enter with their tensor-parallel
split only: their `fsdp` shards are all-gathered once at the shard_map boundary,
i.e. once per solve, and the backward solve runs under the same layout.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from ..deq import DEQConfig, backward_sink, deq, unroll
from ..model.collectives import Collectives
from ..solvers import SampleReduce, SolveStats
from .config import AXES, ParallelConfig
from .sharding import activation_spec, state_specs


def _seq_axes(cfg: ParallelConfig) -> tuple[str, ...]:
    # Size-1 axes are kept: their collectives are no-ops (one device per group), and keeping
    # them keeps the varying-axes types of the shard_map body the same on every mesh.
    return cfg.rule("seq")


def collectives(seq_axes: tuple[str, ...]) -> Collectives:
    """Sequence all-gather before input projections, reduce-scatter after output projections."""
    if not seq_axes:
        return Collectives()
    return Collectives(
        gather_seq=lambda a: lax.all_gather(a, seq_axes, axis=1, tiled=True),
        scatter_seq=lambda a: lax.psum_scatter(a, seq_axes, scatter_dimension=1, tiled=True))


def sample_reduce(cfg: ParallelConfig) -> SampleReduce:
    # The stop test of a sample is computed from psums over `seq`, so it is already identical
    # across those devices; reducing it over data/fsdp too is what "global" lockstep adds.
    seq = _seq_axes(cfg)
    return SampleReduce(axes=seq, lockstep_axes=AXES if cfg.lockstep == "global" else seq)


def _tree_spec(tree: Any, spec: P) -> Any:
    return jax.tree.map(lambda _: spec, tree)


def _param_in_specs(params: Any, cfg: ParallelConfig) -> Any:
    # Everything but the tensor split is gathered at the boundary (once per solve).
    keep = set(cfg.rule("heads")) | set(cfg.rule("mlp")) | set(cfg.rule("vocab"))
    drop = tuple(a for a in AXES if a not in keep)
    return state_specs(params, cfg, drop)


def make_solve(mesh: Mesh, cfg: ParallelConfig) -> Callable:
    """A solve hook for the model: (f, params, x, z0, deq_cfg, bwd_sink) -> (z*, SolveStats)."""
    z_spec = activation_spec(cfg, "batch", "seq", None)
    row_spec = activation_spec(cfg, "batch")
    comms = collectives(_seq_axes(cfg))
    reduce = sample_reduce(cfg)

    def solve(f, params, x, z0, deq_cfg: DEQConfig, bwd_sink=None):
        if bwd_sink is None:
            bwd_sink = backward_sink(z0.shape[0])

        def local(params, x, z0, sink):
            return deq(functools.partial(f, comms=comms), params, x, z0, deq_cfg, reduce=reduce, bwd_sink=sink)

        stats_spec = SolveStats(*([row_spec] * 6),
                                trace=P(*row_spec, None) if deq_cfg.fwd.trace else None)
        return jax.shard_map(
            local, mesh=mesh,
            in_specs=(_param_in_specs(params, cfg), _tree_spec(x, z_spec), z_spec, _tree_spec(bwd_sink, row_spec)),
            out_specs=(z_spec, stats_spec),
        )(params, x, z0, bwd_sink)

    return solve


def make_unroll(mesh: Mesh, cfg: ParallelConfig) -> Callable:
    """Explicit-twin hook: (f, params, x, z0, n) -> (z_n, rel residual), same layout as the solve."""
    z_spec = activation_spec(cfg, "batch", "seq", None)
    row_spec = activation_spec(cfg, "batch")
    comms = collectives(_seq_axes(cfg))
    reduce = sample_reduce(cfg)

    def unroll_hook(f, params, x, z0, n: int):
        def local(params, x, z0):
            return unroll(functools.partial(f, comms=comms), params, x, z0, n, reduce=reduce)

        return jax.shard_map(local, mesh=mesh,
                             in_specs=(_param_in_specs(params, cfg), _tree_spec(x, z_spec), z_spec),
                             out_specs=(z_spec, row_spec))(params, x, z0)

    return unroll_hook
