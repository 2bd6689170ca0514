"""The trainer's only door to the mesh: everything here goes through deqdist.parallel.

Mesh sizes and the rule table live in `ParallelConfig`; this module turns bad
sizes into `ConfigError`s that name the numbers, and checks that every sharded
dimension (parameters, the token batch, the solver's (B, S, D) activations)
divides evenly *before* anything is compiled or written.
"""
from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deqdist import parallel
from deqdist.config import Config, ConfigError


def build_mesh(cfg: Config, devices=None) -> Mesh:
    """The config's mesh over `devices`: real ones (default: all of them) or a TPU topology's abstract ones."""
    try:
        return parallel.make_mesh(cfg.parallel, devices)
    except ValueError as e:
        n = jax.device_count() if devices is None else len(devices)
        seen = "" if "devices" in str(e) else f" ({n} device{'s' if n != 1 else ''} visible)"
        raise ConfigError(f"{e}{seen}") from None


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, cfg: Config) -> NamedSharding:
    return parallel.batch_sharding(mesh, cfg.parallel)


def param_shardings(param_state, mesh: Mesh, cfg: Config):
    """NamedShardings (same tree as `param_state`, an nnx.State of Params) from the rule table."""
    return parallel.param_shardings(param_state, mesh, cfg.parallel)


def hooks(mesh: Mesh, cfg: Config) -> tuple[Any, Any]:
    """(solve, unroll) hooks for the model, sharded over `mesh`."""
    return parallel.make_solve(mesh, cfg.parallel), parallel.make_unroll(mesh, cfg.parallel)


def check_layout(cfg: Config, mesh: Mesh, abstract_params: Any, param_sh: Any) -> None:
    """ConfigError naming the numbers if any sharded dimension does not split evenly."""
    B, S, D = cfg.data.global_batch_size, cfg.model.seq_len, cfg.model.d_model
    z_sharding = NamedSharding(mesh, parallel.activation_spec(cfg.parallel, "batch", "seq", None))
    checks = [((B, S), batch_sharding(mesh, cfg), "the token batch (data.global_batch_size, seq_len)",
               "; change data.global_batch_size or the parallel.* sizes"),
              ((B, S, D), z_sharding, "the equilibrium state z (batch, model.seq_len, d_model)",
               "; change model.seq_len, data.global_batch_size or the parallel.* sizes")]
    flat_p = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    flat_s = jax.tree.leaves(param_sh, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sh in zip(flat_p, flat_s):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        checks.append((tuple(leaf.shape), sh, f"parameter {name} {tuple(leaf.shape)}",
                       "; change the model size (model.n_heads, d_mlp, vocab_size) or parallel.tensor/fsdp"))
    try:
        for shape, sharding, what, hint in checks:
            parallel.check_divisible(shape, sharding, what, hint)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def decode_shardings(mesh: Mesh, cfg: Config, batch: int) -> dict[str, NamedSharding]:
    """Shardings of the decoding state, laid out like the activations: rows over the batch
    axes (replicated when `batch` does not divide them), the KV cache's heads over the heads
    axes. Keys: tokens (B, S), kv (B, C, H, Dh), z (B, 1, D), rows (B,)."""
    split = math.prod(mesh.shape[a] for a in cfg.parallel.rule("batch"))
    b = "batch" if batch % split == 0 else None

    def sh(*names):
        return NamedSharding(mesh, parallel.activation_spec(cfg.parallel, *names))

    return {"tokens": sh(b, None), "kv": sh(b, None, "heads", None), "z": sh(b, None, None), "rows": sh(b)}
