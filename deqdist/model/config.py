"""The model's configuration, and the model section of a preset.

`ModelConfig` is a frozen dataclass of plain values (ints, floats, bools,
strings) so the config layer can load it from YAML and override it with
dotted keys. It holds what the model itself reads; trainer settings (the
explicit warm-up's depth, the Jacobian regulariser's cadence and weight) live
in the trainer's config. The model is built from it by `DEQTransformer(cfg, rngs=...)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the DEQ-Transformer language model.

    vocab_size:      number of tokens (256 = bytes).
    d_model:         width of z and of the injection.
    n_heads:         attention heads (head_dim = d_model // n_heads).
    d_mlp:           hidden width of the GELU MLP.
    seq_len:         training context length (RoPE needs no table, so the model
                     itself accepts any length; data and benchmarks use this).
    dropout:         variational dropout rate on the attention and MLP branch
                     outputs inside the block (one mask per forward pass).
    emb_dropout:     ordinary dropout on the token embedding (outside the solve).
    tie_embeddings:  LM head is the transposed token embedding.
    weight_norm:     weight-normalise the block's projections (W = g V/||V||),
                     computed once per forward pass, outside the solve.
    init_gain:       block weights are N(0, (init_gain / sqrt(fan_in))^2); the gain
                     sets how far f is from the trivial map LN(z + x) at init
                     (larger = less contractive; see tests/model/test_equilibrium.py).
    out_init_scale:  extra factor on the attention/MLP *output* projections
                     (W_o, W_2) at init; < 1 makes the block more contractive.
    embed_init_std:  std of the token embedding (and untied LM head) at init.
    inject_scale:    initial gain of the injection LayerNorm (strength of x
                     relative to z; larger = more contractive at init).
    rope_base:       rotary embedding base.
    attention_block: 0 = dense causal attention (S x S scores); N > 0 = blockwise attention
                     over blocks of N positions with an online softmax, memory linear in S
                     (deqdist/model/attention.py); for long contexts.
    ln_eps:          LayerNorm epsilon.
    dtype:           compute dtype of the projections/attention and of the block's
                     weights inside the solve ("float32", "bfloat16", ...).
    param_dtype:     storage dtype of the parameters.
    state_dtype:     dtype of z, the injection and the residual stream / LayerNorms
                     inside f. Keep float32 with a bfloat16 `dtype`: a bf16 state
                     puts a floor of ~2e-3 under the relative residual (the
                     rounding of f's output), above the usual tol of 1e-3.
    """

    vocab_size: int = 256
    d_model: int = 64
    n_heads: int = 2
    d_mlp: int = 256
    seq_len: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    tie_embeddings: bool = True
    weight_norm: bool = False
    init_gain: float = 1.0
    out_init_scale: float = 1.0
    inject_scale: float = 1.0
    embed_init_std: float = 0.02
    rope_base: float = 10000.0
    attention_block: int = 0
    ln_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"
    state_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def z_dtype(self) -> Any:
        """`state_dtype` as a dtype: of z, the injection and the residual stream inside f."""
        return jnp.dtype(self.state_dtype)

    @property
    def storage_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    def validate(self) -> "ModelConfig":
        """Raise ValueError (one line) on inconsistent values; return self."""

        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {v!r}")

        for name in ("vocab_size", "d_model", "n_heads", "d_mlp", "seq_len"):
            positive_int(name)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"model.d_model / model.n_heads = {self.head_dim} must be even for rotary embeddings"
            )
        for name in ("dropout", "emb_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {v!r}")
        for name in ("init_gain", "out_init_scale", "embed_init_std", "inject_scale", "rope_base", "ln_eps"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"model.{name} must be > 0, got {v!r}")
        if not isinstance(self.attention_block, int) or isinstance(self.attention_block, bool) \
                or self.attention_block < 0:
            raise ValueError(f"model.attention_block must be an integer >= 0 (0 = dense attention), "
                             f"got {self.attention_block!r}")
        for name in ("dtype", "param_dtype", "state_dtype"):
            v = getattr(self, name)
            if v not in _DTYPES:
                raise ValueError(f"model.{name} must be one of {_DTYPES}, got {v!r}")
        return self

    def param_count(self) -> int:
        """Number of parameters of the model this config builds (no allocation)."""
        d, m, v = self.d_model, self.d_mlp, self.vocab_size
        n = v * d  # token embedding
        n += 2 * d  # injection LayerNorm
        n += 4 * d * d + d  # W_q, W_k, W_v, W_o, b_o
        n += d * m + m + m * d + d  # W_1, b_1, W_2, b_2
        n += 3 * 2 * d  # block LayerNorms (attn, mlp, out)
        if self.weight_norm:
            n += 3 * d + d + m + d  # g of W_q/W_k/W_v (heads*head_dim), W_o, W_1, W_2
        n += 2 * d  # final LayerNorm
        if not self.tie_embeddings:
            n += d * v
        return n
