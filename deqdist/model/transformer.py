"""The DEQ-Transformer language model and its explicit (unrolled) twin.

    tokens (B, S) --embed--> e --LN_inj--> x_inj            [outside the solve]
    masks  m_attn, m_mlp ~ variational dropout (B, S, D)   [drawn once]
    z* = f(z*, x) with z0 = 0                               [solve hook, deq.py]
      or z_n = f^n(z0, x)                                   [explicit twin]
    logits = LN_f(z) @ W_head  (W_head = E^T if tied)       [outside the solve]

The DEQ and explicit modes share the module and therefore the parameter tree;
`mode` only chooses how z is obtained from f.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from deqdist.deq import DEQConfig, deq
from deqdist.model.block import DEQBlock, block_fn, prepare_block_params
from deqdist.model.collectives import LOCAL, Collectives
from deqdist.model.config import ModelConfig
from deqdist.model.layers import LayerNorm, named_param
from deqdist.regularize import hutchinson_jac_fro2, spectral_radius

# f(params, z, x, comms) -> z
EquilibriumFn = Callable[..., jax.Array]
# solve(f, params, x, z0, deq_cfg, bwd_sink) -> (z_star, SolveStats)
EquilibriumSolve = Callable[..., tuple[jax.Array, Any]]
# unroll(f, params, x, z0, n) -> (z_n, rel_residual (B,))
Unroll = Callable[..., tuple[jax.Array, jax.Array]]


def local_solve(f: EquilibriumFn, params, x, z0, cfg: DEQConfig, bwd_sink=None):
    """Default (unsharded) solve hook: `deq` on f with identity collectives."""
    return deq(functools.partial(f, comms=LOCAL), params, x, z0, cfg, bwd_sink=bwd_sink)


def per_sample_norm(a: jax.Array) -> jax.Array:
    """L2 norm of each sample (leading axis) in float32 -> (B,)."""
    a32 = a.astype(jnp.float32).reshape(a.shape[0], -1)
    return jnp.sqrt(jnp.sum(a32 * a32, axis=1))


def local_unroll(f: EquilibriumFn, params, x, z0, n: int):
    """Default explicit twin: z_n = f^n(z0) by lax.scan (ordinary backprop).

    Returns (z_n, ||z_n - z_{n-1}|| / ||z_n|| per sample).
    """
    if n < 1:
        raise ValueError(f"n_unroll must be >= 1, got {n}")

    def body(carry, _):
        z, _ = carry
        return (f(params, z, x, comms=LOCAL), z), None

    (z, zprev), _ = jax.lax.scan(body, (z0, z0), None, length=n)
    rel = per_sample_norm(z - zprev) / (per_sample_norm(z) + 1e-12)
    return z, rel


def lm_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean next-token cross-entropy in nats (float32); `mask` (B, S) weights tokens."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    if mask is None:
        return ce.mean()
    mask = mask.astype(jnp.float32)
    return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class DEQTransformer(nnx.Module):
    """DEQ-Transformer LM. Build with `DEQTransformer(cfg, rngs=nnx.Rngs(0))` or `cfg.create(rngs)`.

    Pieces (each usable on its own, e.g. by benchmarks and parallel/):
      inject(tokens, deterministic=, key=) -> x       injection + dropout masks (dict of (B,S,D))
      split_block() -> (f, params)                    f(params, z, x, comms), prepared block state
      z0(tokens) -> zeros (B,S,D)                     solver start
      fixed_point_map(tokens) -> (F, z0)              F(z) = f(params, z, x) for benchmarks
      features(tokens, ...) -> (z, aux)               z* (deq) or f^n(z0) (explicit)
      head(z) -> logits (float32)                     final LN + LM head
      __call__(tokens, ...) -> (logits, aux)          head(features(...))
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        d, v = cfg.d_model, cfg.vocab_size
        pdt = cfg.storage_dtype
        w_init = nnx.initializers.normal(cfg.embed_init_std)
        self.embed = named_param(rngs, w_init, (v, d), ("vocab", "embed"), pdt)
        self.ln_inj = LayerNorm(d, eps=cfg.ln_eps, scale_init=cfg.inject_scale, dtype=pdt)
        self.block = DEQBlock(cfg, rngs=rngs)
        self.ln_f = LayerNorm(d, eps=cfg.ln_eps, dtype=pdt)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = named_param(rngs, w_init, (d, v), ("embed", "vocab"), pdt)

    # ------------------------------------------------------------------ pieces
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

    # ------------------------------------------------------------------ forward
    def features(
        self,
        tokens: jax.Array,
        *,
        mode: Literal["deq", "explicit"] = "deq",
        deq_cfg: DEQConfig | None = None,
        n_unroll: int | None = None,
        solve: EquilibriumSolve = local_solve,
        unroll: Unroll = local_unroll,
        bwd_sink: Any = None,
        deterministic: bool = True,
        key: jax.Array | None = None,
        jac_reg: bool = False,
        jac_samples: int = 1,
    ) -> tuple[jax.Array, dict]:
        """The final state z (B, S, D) (z* in deq mode) and an aux dict; `__call__` minus the head.

        tokens:      (B, S) int.
        mode:        "deq" (solve z* = f(z*, x) with `solve`) or "explicit"
                     (z = f^n_unroll(0) with `unroll`, ordinary backprop). Static.
        deq_cfg:     DEQConfig of the solve (forward/backward solvers, grad mode);
                     default DEQConfig().
        n_unroll:    applications of f in explicit mode (required there). Static.
        solve:       solve hook (f, params, x, z0, deq_cfg, bwd_sink) -> (z*, stats);
                     parallel/ passes a shard_map'd one.
        unroll:      explicit-mode hook (f, params, x, z0, n) -> (z_n, rel_res).
        bwd_sink:    passed to the solve hook (backward solve stats arrive as its gradient).
        deterministic: no dropout when True; else `key` draws the masks.
        key:         PRNG key for dropout masks and the Hutchinson probe.
        jac_reg:     also return the Hutchinson estimate of ||J_f(z*)||_F^2 (one
                     probe by default) at the final z, differentiable. Static.

        aux:
          "fwd_stats":    forward SolveStats (deq mode)
          "rel_residual": (B,) relative residual of the final z
                          (deq: stats.rel_residual; explicit: ||z_n - z_{n-1}||/||z_n||)
          "jac_fro2":     (B,) Hutchinson estimate of ||J_f(z)||_F^2       (jac_reg)
          "jac_loss":     scalar, mean over the batch of jac_fro2 / (S*D) (jac_reg)
        """
        if mode not in ("deq", "explicit"):
            raise ValueError(f"mode must be 'deq' or 'explicit', got {mode!r}")
        k_drop = k_jac = None
        if key is not None:
            k_drop, k_jac = jax.random.split(key)
        x = self.inject(tokens, deterministic=deterministic, key=k_drop)
        f, params = self.split_block()
        z0 = self.z0(tokens)
        aux: dict[str, Any] = {}
        if mode == "deq":
            if deq_cfg is None:
                deq_cfg = DEQConfig()
            z, stats = solve(f, params, x, z0, deq_cfg, bwd_sink)
            aux["fwd_stats"] = stats
            aux["rel_residual"] = stats.rel_residual
        else:
            if n_unroll is None:
                raise ValueError("explicit mode needs n_unroll (the trainer passes train.n_unroll)")
            z, rel = unroll(f, params, x, z0, int(n_unroll))
            aux["rel_residual"] = rel
        if jac_reg:
            if k_jac is None:
                raise ValueError("jac_reg=True needs a PRNG key")
            # Identity collectives: outside shard_map GSPMD partitions this like any jit code.
            fro2 = hutchinson_jac_fro2(lambda zz: f(params, zz, x, comms=LOCAL), z, k_jac, n_samples=jac_samples)
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

    def __call__(self, tokens: jax.Array, **kwargs) -> tuple[jax.Array, dict]:
        """Logits (B, S, V) float32 and the aux dict of `features` (same keyword arguments)."""
        z, aux = self.features(tokens, **kwargs)
        return self.head(z), aux


# ---------------------------------------------------------------------------
# Parameter helpers for train/ and parallel/
# ---------------------------------------------------------------------------
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
    "Collectives",
    "DEQTransformer",
    "EquilibriumFn",
    "EquilibriumSolve",
    "Unroll",
    "block_params_and_specs",
    "local_solve",
    "local_unroll",
    "lm_loss",
    "logical_specs",
    "param_count",
    "per_sample_norm",
]
