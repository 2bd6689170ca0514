"""Sampling from the equilibrium model (DEQ mode), greedy or with a temperature.

A DEQ has no KV cache (every position's z* depends on the whole solve), so
each new token re-solves the window of the last model.seq_len tokens; the
window is a fixed-size slice of one buffer, so the whole generation is one
compiled `fori_loop`. Positions after the current one hold padding, which
causal attention never reads.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deqdist.config import Config
from deqdist.train.state import StateSpec, merge


def _sampler(spec: StateSpec, cfg: Config, buf_len: int, n_new: int):
    S = cfg.model.seq_len

    def run(params, buf, prompt_len, key, temperature):
        model = merge(spec, params)

        def body(i, carry):
            buf, key = carry
            L = prompt_len + i  # tokens so far
            start = jnp.maximum(L - S, 0)
            window = jax.lax.dynamic_slice(buf, (0, start), (1, S))
            logits, _ = model(window, mode="deq", deq_cfg=cfg.solver)
            lg = jax.lax.dynamic_index_in_dim(logits[0], L - 1 - start, keepdims=False)
            key, sub = jax.random.split(key)
            sampled = jax.random.categorical(sub, lg / jnp.maximum(temperature, 1e-6))
            tok = jnp.where(temperature > 0, sampled, jnp.argmax(lg)).astype(buf.dtype)
            return buf.at[0, L].set(tok), key

        buf, _ = jax.lax.fori_loop(0, n_new, body, (buf, key))
        return buf

    return jax.jit(run)


def generate(spec: StateSpec, cfg: Config, params: Any, prompt: Sequence[int], n_new: int, *,
             temperature: float = 0.8, seed: int = 0) -> list[int]:
    """The `n_new` token ids that follow `prompt` (prompt truncated to its last model.seq_len ids)."""
    S = cfg.model.seq_len
    prompt = [int(t) for t in prompt][-S:]
    if not prompt:
        raise ValueError("the prompt is empty; give at least one token")
    if n_new <= 0:
        return []
    buf_len = max(len(prompt) + n_new, S)
    buf = np.zeros((1, buf_len), np.int32)
    buf[0, : len(prompt)] = prompt
    rep = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
    out = _sampler(spec, cfg, buf_len, n_new)(
        params, jax.device_put(buf, rep), jnp.int32(len(prompt)), jax.random.PRNGKey(seed),
        jnp.float32(temperature),
    )
    out = np.asarray(jax.device_get(out))[0]
    return out[len(prompt) : len(prompt) + n_new].tolist()
