"""The DEQ-Transformer language model and its explicit (unrolled) twin.

    tokens (B, S) --embed--> e --LN_inj--> x_inj            [outside the solve]
    masks  m_attn, m_mlp ~ variational dropout (B, S, D)   [drawn once]
    z* = f(z*, x) with z0 = 0                               [hooks.solve, deq.py]
      or z_n = f^n(z0, x)                                   [explicit twin]
    logits = LN_f(z) @ W_head  (W_head = E^T if tied)       [outside the solve]

The DEQ and explicit modes share the module and therefore the parameter tree;
the `SolveHooks` the model is called with choose how z is obtained from f.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from deqdist.model.block import DEQBlock, block_fn, prepare_block_params
from deqdist.model.collectives import LOCAL
from deqdist.model.config import ModelConfig
from deqdist.model.hooks import EquilibriumFn, SolveHooks
from deqdist.model.layers import LayerNorm, named_param
from deqdist.regularize import hutchinson_jac_fro2, spectral_radius


def lm_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean next-token cross-entropy in nats (float32); `mask` (B, S) weights tokens."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    if mask is None:
        return ce.mean()
    mask = mask.astype(jnp.float32)
    return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class DEQTransformer(nnx.Module):
    """DEQ-Transformer LM. Build with `DEQTransformer(cfg, rngs=nnx.Rngs(0))`.

    Pieces (each usable on its own, e.g. by benchmarks and parallel/):
      inject(tokens, deterministic=, key=) -> x       injection + dropout masks (dict of (B,S,D))
      split_block() -> (f, params)                    f(params, z, x, comms), prepared block state
      z0(tokens) -> zeros (B,S,D)                     solver start
      fixed_point_map(tokens) -> (F, z0)              F(z) = f(params, z, x) for benchmarks
      features(tokens, hooks) -> (z, aux)             z* (deq) or f^n(z0) (explicit)
      head(z) -> logits (float32)                     final LN + LM head
      __call__(tokens, hooks) -> (logits, aux)        head(features(...))
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        d, v = cfg.d_model, cfg.vocab_size
        param_dtype = cfg.storage_dtype
        w_init = nnx.initializers.normal(cfg.embed_init_std)
        self.embed = named_param(rngs, w_init, (v, d), ("vocab", "embed"), param_dtype)
        self.ln_inj = LayerNorm(d, eps=cfg.ln_eps, scale_init=cfg.inject_scale, dtype=param_dtype)
        self.block = DEQBlock(cfg, rngs=rngs)
        self.ln_f = LayerNorm(d, eps=cfg.ln_eps, dtype=param_dtype)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = named_param(rngs, w_init, (d, v), ("embed", "vocab"), param_dtype)

    def inject(self, tokens: jax.Array, *, deterministic: bool = True, key: jax.Array | None = None) -> dict:
        """x = {"inj": LN_inj(embed(tokens)), "mask_attn", "mask_mlp"} (masks only when dropping).

        Every leaf is (B, S, D) in the state dtype (like z), so it shards like z.
        Masks are Bernoulli(keep)/keep, drawn once: every solver iteration
        (and every unrolled application) uses the same masks.
        """
        cfg = self.cfg
        dt = cfg.z_dtype
        e = jnp.take(self.embed[...], tokens, axis=0).astype(dt)
        drop_emb = (not deterministic) and cfg.emb_dropout > 0
        drop_blk = (not deterministic) and cfg.dropout > 0
        if (drop_emb or drop_blk) and key is None:
            raise ValueError("dropout is on (deterministic=False) but no PRNG key was given")
        if drop_emb or drop_blk:
            k_emb, k_attn, k_mlp = jax.random.split(key, 3)
        if drop_emb:
            keep = 1.0 - cfg.emb_dropout
            e = e * (jax.random.bernoulli(k_emb, keep, e.shape).astype(dt) / keep)
        x = {"inj": self.ln_inj(e)}
        if drop_blk:
            keep = 1.0 - cfg.dropout
            shape = x["inj"].shape
            x["mask_attn"] = jax.random.bernoulli(k_attn, keep, shape).astype(dt) / keep
            x["mask_mlp"] = jax.random.bernoulli(k_mlp, keep, shape).astype(dt) / keep
        return x

    def split_block(self) -> tuple[EquilibriumFn, nnx.State]:
        """(f, params): the equilibrium function and the block state it takes.

        params are weight-normalised (if configured) and cast to the compute
        dtype here, once, differentiably; f(params, z, x, comms) never
        renormalises.
        """
        graphdef, params = nnx.split(self.block)
        return block_fn(graphdef), prepare_block_params(params, self.cfg)

    def head(self, z: jax.Array) -> jax.Array:
        """Final LayerNorm + LM head; logits in float32."""
        h = self.ln_f(z)
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        return jnp.einsum("bsd,dv->bsv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)

    def z0(self, tokens: jax.Array) -> jax.Array:
        """The solver's starting point: zeros (B, S, D) in the state dtype."""
        return jnp.zeros((*tokens.shape, self.cfg.d_model), self.cfg.z_dtype)

    def fixed_point_map(
        self, tokens: jax.Array, *, deterministic: bool = True, key: jax.Array | None = None
    ) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
        """(F, z0) with F(z) = f(params, z, x) for these tokens: the bare root-finding
        problem, e.g. for `deqdist.solvers.solve(F, z0, cfg)` in benchmarks."""
        x = self.inject(tokens, deterministic=deterministic, key=key)
        f, params = self.split_block()
        return (lambda z: f(params, z, x, comms=LOCAL)), self.z0(tokens)

    def features(self, tokens: jax.Array, hooks: SolveHooks = SolveHooks(), *, deterministic: bool = True,
                 key: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """The final state z (B, S, D) (z* in deq mode) and an aux dict; `__call__` minus the head.

        tokens:        (B, S) int.
        hooks:         how z is obtained from f (mode, solve/unroll, sink, Jacobian term).
        deterministic: no dropout when True; else `key` draws the masks.
        key:           PRNG key for dropout masks and the Hutchinson probes.

        aux:
          "fwd_stats":    forward SolveStats (deq mode)
          "rel_residual": (B,) relative residual of the final z
                          (deq: stats.rel_residual; explicit: ||z_n - z_{n-1}||/||z_n||)
          "jac_fro2":     (B,) Hutchinson estimate of ||J_f(z)||_F^2, differentiable (jac_samples > 0)
          "jac_loss":     scalar, mean over the batch of jac_fro2 / (S*D)       (jac_samples > 0)
        """
        k_drop = k_jac = None
        if key is not None:
            k_drop, k_jac = jax.random.split(key)
        x = self.inject(tokens, deterministic=deterministic, key=k_drop)
        f, params = self.split_block()
        z0 = self.z0(tokens)
        aux: dict[str, Any] = {}
        if hooks.mode == "deq":
            z, stats = hooks.solve(f, params, x, z0, hooks.deq_cfg, hooks.bwd_sink)
            aux["fwd_stats"] = stats
            aux["rel_residual"] = stats.rel_residual
        else:
            z, aux["rel_residual"] = hooks.unroll(f, params, x, z0, int(hooks.n_unroll))
        if hooks.jac_samples:
            if k_jac is None:
                raise ValueError("the Jacobian term (jac_samples > 0) needs a PRNG key")
            # Identity collectives: outside shard_map GSPMD partitions this like any jit code.
            fro2 = hutchinson_jac_fro2(lambda zz: f(params, zz, x, comms=LOCAL), z, k_jac,
                                       n_samples=hooks.jac_samples)
            aux["jac_fro2"] = fro2
            aux["jac_loss"] = jnp.mean(fro2.astype(jnp.float32)) / (z.shape[1] * z.shape[2])
        return z, aux

    def jacobian_spectral_radius(self, tokens: jax.Array, z: jax.Array, key: jax.Array, n_iter: int = 20) -> jax.Array:
        """(B,) power-method estimate of the spectral radius of J_f at z (no gradient, no dropout).

        At z = z* it says how contractive f is where the solver works: near 1 the
        forward and backward solves slow down, above 1 Picard diverges.
        """
        x = self.inject(tokens)
        f, params = self.split_block()
        return spectral_radius(lambda zz: f(params, zz, x, comms=LOCAL), z, key, n_iter=n_iter)

    def __call__(self, tokens: jax.Array, hooks: SolveHooks = SolveHooks(), *, deterministic: bool = True,
                 key: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Logits (B, S, V) float32 and the aux dict of `features` (same arguments)."""
        z, aux = self.features(tokens, hooks, deterministic=deterministic, key=key)
        return self.head(z), aux


def param_count(model: nnx.Module) -> int:
    return int(sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param))))


def logical_specs(model: nnx.Module) -> nnx.State:
    """PartitionSpecs of logical axis names for every nnx.Param of `model` (same tree as its Param state)."""
    return nnx.get_partition_spec(nnx.state(model, nnx.Param))


def block_params_and_specs(model: DEQTransformer) -> tuple[nnx.State, nnx.State]:
    """(block Param state, its logical PartitionSpecs): the state the solve hook's params follow."""
    state = nnx.state(model.block, nnx.Param)
    return state, nnx.get_partition_spec(state)


__all__ = [
    "DEQTransformer",
    "block_params_and_specs",
    "lm_loss",
    "logical_specs",
    "param_count",
]
