"""Logical names -> PartitionSpecs -> NamedShardings, for parameters, optimizer state and data."""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .config import ParallelConfig


def _is_spec(x) -> bool:
    return isinstance(x, P)


def mesh_spec(logical: P | None, cfg: ParallelConfig, drop: tuple[str, ...] = ()) -> P:
    """Map a PartitionSpec of logical names to mesh axes (`drop`: mesh axes to leave out)."""
    if logical is None:
        return P()
    out, used = [], set()
    for name in logical:
        axes = tuple(a for a in cfg.rule(name) if a not in drop and a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def logical_to_mesh(specs: Any, cfg: ParallelConfig, drop: tuple[str, ...] = ()) -> Any:
    """Map a tree of logical PartitionSpecs (e.g. nnx.get_partition_spec(state)) to mesh specs."""
    return jax.tree.map(lambda s: mesh_spec(s, cfg, drop), specs, is_leaf=_is_spec)


def state_specs(state: Any, cfg: ParallelConfig, drop: tuple[str, ...] = ()) -> Any:
    """Mesh PartitionSpecs for every leaf of an nnx.State (unnamed variables are replicated)."""
    return logical_to_mesh(nnx.get_partition_spec(state), cfg, drop)


def param_shardings(state: Any, mesh: Mesh, cfg: ParallelConfig) -> Any:
    """NamedShardings for every leaf of an nnx.State (model or optimizer), from the rule table."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state, cfg), is_leaf=_is_spec)


def activation_spec(cfg: ParallelConfig, *names: str | None) -> P:
    return mesh_spec(P(*names), cfg)


def batch_sharding(mesh: Mesh, cfg: ParallelConfig = ParallelConfig()) -> NamedSharding:
    """Sharding of (B, S) token batches: batch split, sequence whole (embedding is GSPMD)."""
    return NamedSharding(mesh, activation_spec(cfg, "batch", None))
