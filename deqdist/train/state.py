"""The train state: parameters, AdamW state, step and RNG, as one pytree of plain dicts.

    state = {"step": int32[], "rng": uint32[2], "params": {...}, "opt_state": optax state}

Parameters are the model's nnx.Param state as a pure nested dict (the
checkpoint format does not depend on Flax's Variable classes); the model is
rebuilt inside the step with `nnx.merge(graphdef, params)`. Every leaf has a
NamedSharding for the current mesh, derived from the model's logical axis
names by deqdist.parallel; AdamW's moments are sharded like their parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from deqdist.config import Config, TrainConfig
from deqdist.model import DEQTransformer
from deqdist.train import mesh as train_mesh


def lr_schedule(t: TrainConfig) -> optax.Schedule:
    """Linear warm-up 0 -> lr over warmup_steps, then cosine / linear decay to lr*min_lr_ratio at steps."""
    end = t.lr * t.min_lr_ratio
    warm = max(t.warmup_steps, 0)
    rest = max(t.steps - warm, 1)
    if t.schedule == "cosine":
        after = optax.cosine_decay_schedule(t.lr, rest, alpha=t.min_lr_ratio)
    elif t.schedule == "linear":
        after = optax.linear_schedule(t.lr, end, rest)
    else:
        after = optax.constant_schedule(t.lr)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warm), after], [warm])


def _decay_mask(params):
    # Decay matrices (embeddings, projections), not biases or LayerNorm gains.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(t: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = lr_schedule(t)
    parts = []
    if t.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(t.clip_norm))
    parts.append(optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=_decay_mask))
    return optax.chain(*parts), schedule


@dataclasses.dataclass
class StateSpec:
    """How to build, shard and restore the train state on one mesh."""

    graphdef: Any  # the model's nnx GraphDef
    abstract: Any  # pytree of jax.ShapeDtypeStruct (no sharding)
    shardings: Any  # same tree, NamedSharding for the current mesh
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh

    def abstract_for_restore(self) -> Any:
        """ShapeDtypeStructs carrying the current mesh's shardings: orbax restores (and reshards) into these."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.abstract, self.shardings
        )


def _model(cfg: Config) -> DEQTransformer:
    return DEQTransformer(cfg.model, rngs=nnx.Rngs(params=cfg.train.seed))


def _init_fn(cfg: Config, tx: optax.GradientTransformation):
    def init():
        model = _model(cfg)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return {
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.PRNGKey(cfg.train.seed + 1),
            "params": params,
            "opt_state": tx.init(params),
        }

    return init


def state_spec(cfg: Config, mesh: Mesh) -> StateSpec:
    """Abstract state + shardings for `mesh`, without allocating anything; checks the layout."""
    tx, schedule = make_optimizer(cfg.train)
    abs_model = nnx.eval_shape(lambda: _model(cfg))
    graphdef, param_state, rest = nnx.split(abs_model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise NotImplementedError("the model has non-parameter state; the trainer only carries nnx.Param")
    abstract = jax.eval_shape(_init_fn(cfg, tx))
    p_sh = nnx.to_pure_dict(train_mesh.param_shardings(param_state, mesh, cfg))
    train_mesh.check_layout(cfg, mesh, abstract["params"], p_sh)
    rep = train_mesh.replicated(mesh)
    o_sh = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], p_sh, transform_non_params=lambda _: rep)
    shardings = {"step": rep, "rng": rep, "params": p_sh, "opt_state": o_sh}
    return StateSpec(graphdef, abstract, shardings, tx, schedule, mesh)


def init_state(cfg: Config, spec: StateSpec) -> Any:
    """A fresh state, created directly in its sharded layout (no host copy of the parameters)."""
    return jax.jit(_init_fn(cfg, spec.tx), out_shardings=spec.shardings)()


def merge(spec: StateSpec, params) -> DEQTransformer:
    return nnx.merge(spec.graphdef, params)
