"""The weight-tied DEQ block f(z, x) and its pure-function form.

Block (all per-token tensors are (B, S_local, D); S_local = S unsharded):

    u  = z + x_inj                                  input injection
    u  = u + m_attn * (scatter(MHA(gather(LN_a(u)))) + b_o)
    u  = u + m_mlp  * (scatter(W_2 gelu(gather(LN_m(u)) W_1 + b_1)) + b_2)
    f  = LN_out(u)

* Pre-LN causal multi-head attention with rotary embeddings and a GELU MLP,
  each with a residual connection. `model.attention_block` > 0 computes the
  attention in blocks with an online softmax (deqdist/model/attention.py)
  instead of materialising the (S x S) scores.
* **Injection added to the block input** (u = z + x) rather than to the Q/K/V
  and MLP input projections: it is one add on the local shard with no extra
  weights, it feeds both sub-layers (and the residual stream, so the output LN
  sees it directly), and it keeps every per-token tensor entering f shaped
  like z, (B, S, D), so parallel/ shards it exactly like z. Adding x to the
  projections would mean one injection per projection (3D + M wide per token).
* **Output LayerNorm inside f** (as in the post-LN DEQ-Transformer of Bai et
  al.) makes f contractive at init: f(z) = LN_out(z + x + r(z)); the LN
  Jacobian scales perturbations by ~1/std(u) and removes the component along
  u, and x has unit RMS (injection LN), so J_f = J_LN (I + J_r) stays below 1
  while the branches r are O(1) (fan-in scaled init, `init_gain`=1). A pre-LN
  residual block without it has J = I + J_r, which is not contractive.
  The README ("How contractive f is at init") gives the spectral radius and the
  solver iterations this yields. With init_gain 0.02*sqrt(d) (GPT-style std
  0.02) the branches would be negligible and f would converge in a few steps:
  a degenerate, not a "real", transformer block.
* Precision: z, the injection, the residual stream and the LayerNorms are in
  the state dtype (z's dtype, float32 by default); the projections and the
  attention run in the dtype of the prepared weights (cfg.dtype, e.g. bf16),
  and so do the gathered/scattered activations. With bf16 compute, bf16
  rounding in f puts a floor under its relative residual (README, same
  section): use a forward tol of >= 2e-3 in bf16.
* Variational dropout: the masks m_attn, m_mlp (already scaled by 1/keep) are
  drawn once per forward pass outside the solve and arrive in x; absent masks
  mean no dropout.
* Sequence/tensor parallelism (Megatron style): LayerNorms, residual adds and
  dropout act on the local sequence shard; `comms.gather_seq` before the input
  projections; attention over the full gathered sequence (RoPE positions
  0..S-1, causal mask over S) with the *local* heads, their number read from
  the weight shape (D, H_local, Dh); output projections produce partial sums,
  `comms.scatter_seq` reduce-scatters them, and the output biases are added
  after the scatter so they are not summed tp times. The MLP hidden axis is
  split the same way (W_1 (D, M_local), b_1 (M_local,), W_2 (M_local, D)).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from deqdist.model.attention import blockwise_causal_attention
from deqdist.model.collectives import LOCAL, Collectives
from deqdist.model.config import ModelConfig
from deqdist.model.layers import LayerNorm, named_param, rope

# Weight-normalised projections: name -> (axes the norm runs over, logical names of g).
WEIGHT_NORM_AXES: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "wq": ((0,), ("heads", "head_dim")),
    "wk": ((0,), ("heads", "head_dim")),
    "wv": ((0,), ("heads", "head_dim")),
    "wo": ((0, 1), ("embed",)),
    "w1": ((0,), ("mlp",)),
    "w2": ((0,), ("embed",)),
}


class DEQBlock(nnx.Module):
    """The block f(z, x). `__call__(z, x, comms)`; x = {"inj": .., "mask_attn"?: .., "mask_mlp"?: ..}."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, dh, m = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_mlp
        param_dtype = cfg.storage_dtype
        self.rope_base = float(cfg.rope_base)
        self.attention_block = int(cfg.attention_block)
        g, go = cfg.init_gain, cfg.init_gain * cfg.out_init_scale
        w_init = nnx.initializers.normal(g / d**0.5)  # fan_in = d for W_q, W_k, W_v, W_1
        o_init = nnx.initializers.normal(go / d**0.5)  # fan_in = H * Dh = d for W_o
        o2_init = nnx.initializers.normal(go / m**0.5)  # fan_in = d_mlp for W_2
        zeros = nnx.initializers.zeros_init()
        self.ln_attn = LayerNorm(d, eps=cfg.ln_eps, dtype=param_dtype)
        self.wq = named_param(rngs, w_init, (d, h, dh), ("embed", "heads", "head_dim"), param_dtype)
        self.wk = named_param(rngs, w_init, (d, h, dh), ("embed", "heads", "head_dim"), param_dtype)
        self.wv = named_param(rngs, w_init, (d, h, dh), ("embed", "heads", "head_dim"), param_dtype)
        self.wo = named_param(rngs, o_init, (h, dh, d), ("heads", "head_dim", "embed"), param_dtype)
        self.bo = named_param(rngs, zeros, (d,), ("embed",), param_dtype)
        self.ln_mlp = LayerNorm(d, eps=cfg.ln_eps, dtype=param_dtype)
        self.w1 = named_param(rngs, w_init, (d, m), ("embed", "mlp"), param_dtype)
        self.b1 = named_param(rngs, zeros, (m,), ("mlp",), param_dtype)
        self.w2 = named_param(rngs, o2_init, (m, d), ("mlp", "embed"), param_dtype)
        self.b2 = named_param(rngs, zeros, (d,), ("embed",), param_dtype)
        self.ln_out = LayerNorm(d, eps=cfg.ln_eps, dtype=param_dtype)
        if cfg.weight_norm:
            # g initialised to ||V|| so that W = g V / ||V|| equals V at init.
            gains = {}
            for name, (axes, names) in WEIGHT_NORM_AXES.items():
                norm = jnp.sqrt(jnp.sum(jnp.square(getattr(self, name)[...].astype(jnp.float32)), axis=axes))
                gains[name] = named_param(
                    None, lambda k, s, dt, n=norm: n.astype(dt), norm.shape, names, param_dtype
                )
            self.wn = nnx.Dict(gains)
        else:
            self.wn = None

    def __call__(self, z: jax.Array, x: Mapping[str, jax.Array], comms: Collectives = LOCAL,
                 attend: Callable[..., jax.Array] | None = None) -> jax.Array:
        """f(z, x). `attend(q, k, v) -> att` (B, S, H, Dh), given un-rotated q, k, v, replaces
        the causal RoPE attention over the positions of z (decoding attends to a cache)."""
        sdt = z.dtype  # state dtype: residual stream, LayerNorms, masks (float32 by default)
        cdt = self.wq[...].dtype  # compute dtype of the projections: the (prepared) weights' dtype
        u = z + x["inj"].astype(sdt)

        # --- attention (local heads, full sequence) ---
        a = comms.gather_seq(self.ln_attn(u).astype(cdt))  # (B, S, D)
        q = jnp.einsum("bsd,dhk->bshk", a, self.wq[...])
        k = jnp.einsum("bsd,dhk->bshk", a, self.wk[...].astype(cdt))
        v = jnp.einsum("bsd,dhk->bshk", a, self.wv[...].astype(cdt))
        att = (attend or self.causal_attention)(q, k, v)  # (B, S, H_local, Dh)
        # partial sum over the local heads -> reduce-scatter -> bias
        o = jnp.einsum("bshk,hkd->bsd", att, self.wo[...].astype(cdt))
        o = comms.scatter_seq(o).astype(sdt) + self.bo[...].astype(sdt)
        if "mask_attn" in x:
            o = o * x["mask_attn"].astype(sdt)
        u = u + o

        # --- MLP (local hidden units) ---
        h = comms.gather_seq(self.ln_mlp(u).astype(cdt))
        h = jnp.einsum("bsd,dm->bsm", h, self.w1[...].astype(cdt)) + self.b1[...].astype(cdt)
        h = jax.nn.gelu(h)
        o = jnp.einsum("bsm,md->bsd", h, self.w2[...].astype(cdt))
        o = comms.scatter_seq(o).astype(sdt) + self.b2[...].astype(sdt)
        if "mask_mlp" in x:
            o = o * x["mask_mlp"].astype(sdt)
        u = u + o

        return self.ln_out(u)

    def causal_attention(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """Causal attention over positions 0..S-1 of un-rotated q, k, v (B, S, H, Dh)."""
        q, k = rope(q, self.rope_base), rope(k, self.rope_base)
        if self.attention_block:
            return blockwise_causal_attention(q, k, v, self.attention_block)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True)

    def keys_values(self, z: jax.Array, x: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """The un-rotated keys and values (B, S, H, Dh) that f's attention reads at state z
        (compute dtype): at z* they are what later positions attend to, i.e. the KV cache."""
        cdt = self.wq[...].dtype
        a = self.ln_attn(z + x["inj"].astype(z.dtype)).astype(cdt)
        k = jnp.einsum("bsd,dhk->bshk", a, self.wk[...].astype(cdt))
        v = jnp.einsum("bsd,dhk->bshk", a, self.wv[...].astype(cdt))
        return k, v


def _apply(graphdef, params, z, x, comms: Collectives = LOCAL):
    return nnx.merge(graphdef, params)(z, x, comms)


def block_fn(graphdef) -> Any:
    """The equilibrium function f(params, z, x, comms) -> z of a block's graphdef.

    `params` is the block's nnx.State (as from `nnx.split(block)`, possibly
    sharded / weight-normalised / cast by `prepare_block_params`).
    Returns the same callable object for the same graphdef (stable for caches).
    """
    try:
        return _block_fn_cached(graphdef)
    except TypeError:  # unhashable graphdef
        return functools.partial(_apply, graphdef)


@functools.lru_cache(maxsize=64)
def _block_fn_cached(graphdef):
    return functools.partial(_apply, graphdef)


def weight_normalise(params: nnx.State) -> nnx.State:
    """W = g * V / ||V|| for the projections in WEIGHT_NORM_AXES (differentiable).

    Returns a state with the same structure; the gains `wn.*` stay in it (unused
    by f). Computed in float32.
    """
    if "wn" not in params or params["wn"] is None:
        return params
    new = jax.tree.map(lambda a: a, params)
    for name, (axes, _) in WEIGHT_NORM_AXES.items():
        var = params[name]
        v = var[...]
        v32 = v.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(v32), axis=axes, keepdims=True))
        g = params["wn"][name][...].astype(jnp.float32)
        g = jnp.expand_dims(g, axes)
        new[name] = var.copy((v32 * (g / norm)).astype(v.dtype))
    return new


def cast_floating(params: nnx.State, dtype, min_ndim: int = 2) -> nnx.State:
    """Cast floating leaves with ndim >= min_ndim (the projection matrices) to dtype.

    Vectors (LayerNorm scales/biases, biases, weight-norm gains) keep their
    storage dtype: they act on the float32 state.
    """
    dtype = jnp.dtype(dtype)

    def cast(a):
        if a.ndim >= min_ndim and jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype:
            return a.astype(dtype)
        return a

    return jax.tree.map(cast, params)


def prepare_block_params(params: nnx.State, cfg: ModelConfig) -> nnx.State:
    """What the solve hook receives: weight norm (if on), then matrices cast to cfg.dtype.

    Called ONCE per forward pass, outside the solve, differentiably.
    """
    if cfg.weight_norm:
        params = weight_normalise(params)
    return cast_floating(params, cfg.compute_dtype)
