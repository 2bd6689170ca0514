"""Sampling from the equilibrium model (DEQ mode), greedy or with a temperature.

Two paths, each one compiled `fori_loop` over the new tokens:

* cached (default): the prompts are solved once, causally, and every new token
  solves the fixed point of its own position against a KV cache of the earlier
  positions' equilibria (`deqdist.model.decode`, which also says what the
  cache computes beyond `model.seq_len` tokens). A batch of prompts of
  different lengths is right-padded; the cache is sharded like the activations
  (rows over the batch axes, heads over the heads axes).
* windowed (`cache=False`): every new token re-solves the whole window of the
  last `model.seq_len` tokens, a fixed-size slice of one buffer; positions
  after the current one hold padding, which causal attention never reads.

A model trained with `solver.grad: reversible` always takes the windowed path: its
coupled iteration runs a fixed number of steps and reaches no equilibrium, so there
is no fixed point of one position for a cache of earlier positions to hold
(`decoding_path` says which path a call takes).

Within the first `model.seq_len` positions both sample from the same fixed
points (to solver tolerance). Both report, for every sampled token, the
iterations and relative residual of the solve that produced its logits (for
the cached path the first token's solve is the prompt's).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deqdist.config import Config
from deqdist.model import SolveHooks, decode
from deqdist.train import mesh as train_mesh
from deqdist.train.state import StateSpec, merge


@dataclasses.dataclass
class Generation:
    """Sampled ids per prompt and per-token solver stats, (n_new, B) arrays."""

    tokens: list[list[int]]
    iters: np.ndarray
    residual: np.ndarray

    def summary(self) -> str:
        if not self.iters.size:
            return "no tokens sampled"
        return (f"solver per token: mean {self.iters.mean():.1f} iterations (max {int(self.iters.max())}), "
                f"max relative residual {self.residual.max():.2e}")


def _pick(next_logits: jax.Array, key: jax.Array, temperature: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Next ids (B,) from logits (B, V): categorical at `temperature`, argmax at 0.

    Row r draws with a key of its own (the step's key folded with r), so a prompt samples
    the same text whatever else is in the batch, and whichever path decodes it.
    """
    key, sub = jax.random.split(key)
    keys = jax.vmap(lambda r: jax.random.fold_in(sub, r))(rows)
    sampled = jax.vmap(jax.random.categorical)(keys, next_logits / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, sampled, jnp.argmax(next_logits, axis=-1)).astype(jnp.int32), key


def _windowed_sampler(spec: StateSpec, cfg: Config, n_new: int):
    S = cfg.model.seq_len

    def run(params, buf, prompt_len, row, key, temperature):
        model = merge(spec, params)

        def body(i, carry):
            buf, iters, res, key = carry
            L = prompt_len + i  # tokens so far
            start = jnp.maximum(L - S, 0)
            window = jax.lax.dynamic_slice(buf, (0, start), (1, S))
            logits, aux = model(window, SolveHooks(deq_cfg=cfg.solver))
            next_logits = jax.lax.dynamic_index_in_dim(logits, L - 1 - start, axis=1, keepdims=False)
            tok, key = _pick(next_logits, key, temperature, row[None])
            st = aux["fwd_stats"]
            return buf.at[0, L].set(tok[0]), iters.at[i].set(st.nstep), res.at[i].set(st.rel_residual), key

        zeros = jnp.zeros((n_new, 1), jnp.float32)
        buf, iters, res, _ = jax.lax.fori_loop(0, n_new, body, (buf, zeros.astype(jnp.int32), zeros, key))
        return jax.lax.dynamic_slice_in_dim(buf, prompt_len, n_new, axis=1), iters, res

    return jax.jit(run)


def _cached_sampler(spec: StateSpec, cfg: Config, n_new: int, shardings: dict):
    def constrain(cache: decode.KVCache) -> decode.KVCache:
        wsc = jax.lax.with_sharding_constraint
        return decode.KVCache(k=wsc(cache.k, shardings["kv"]), v=wsc(cache.v, shardings["kv"]),
                              length=wsc(cache.length, shardings["rows"]), z=wsc(cache.z, shardings["z"]))

    def run(params, prompts, lengths, key, temperature):
        model = merge(spec, params)
        rows = jnp.arange(prompts.shape[0])
        next_logits, cache, st = decode.prefill(model, prompts, lengths, cfg.solver)
        tok, key = _pick(next_logits, key, temperature, rows)
        out = jnp.zeros((n_new, prompts.shape[0]), jnp.int32).at[0].set(tok)
        iters = jnp.zeros(out.shape, jnp.int32).at[0].set(st.nstep)
        res = jnp.zeros(out.shape, jnp.float32).at[0].set(st.rel_residual)

        def body(i, carry):
            cache, out, iters, res, key = carry
            next_logits, cache, st = decode.step(model, cache, out[i - 1], cfg.solver)
            tok, key = _pick(next_logits, key, temperature, rows)
            return (constrain(cache), out.at[i].set(tok), iters.at[i].set(st.nstep),
                    res.at[i].set(st.rel_residual), key)

        _, out, iters, res, _ = jax.lax.fori_loop(1, n_new, body, (constrain(cache), out, iters, res, key))
        return out.T, iters, res

    return jax.jit(run)


def _check_prompts(prompts: Sequence[Sequence[int]], S: int) -> list[list[int]]:
    out = [[int(t) for t in p][-S:] for p in prompts]
    if not out or any(not p for p in out):
        raise ValueError("a prompt is empty; give at least one token")
    return out


def uses_cache(cfg: Config, cache: bool) -> bool:
    """Whether decoding takes the KV-cached path: asked for, and the model has equilibria to cache."""
    return cache and cfg.solver.grad != "reversible"


def decoding_path(cfg: Config, cache: bool) -> str:
    """The path a call with `cache` takes, in words (for the user)."""
    if uses_cache(cfg, cache):
        return "KV cache"
    if cfg.solver.grad == "reversible":
        return (f"windowed re-solve: {cfg.solver.reversible.steps} reversible steps per token; a reversible "
                f"model reaches no fixed point, so no KV-cached decoding")
    return "windowed re-solve"


def make_sampler(spec: StateSpec, cfg: Config, n_new: int, *, cache: bool = True):
    """`sample(params, prompts, temperature=, seed=) -> Generation`: the `n_new` ids that follow
    each prompt (each truncated to its last model.seq_len ids), compiled once per batch size.

    `cache=False` (and a reversible model, see `uses_cache`) re-solves the window for every token,
    one prompt after another.
    """
    S = cfg.model.seq_len
    cache = uses_cache(cfg, cache)
    compiled: dict[int, Any] = {}

    def cached(params, prompts, key, temp):
        B = len(prompts)
        sh = train_mesh.decode_shardings(spec.mesh, cfg, B)
        if B not in compiled:
            compiled[B] = _cached_sampler(spec, cfg, n_new, sh)
        # Right-padded to seq_len: the prompt solve has the training shape whatever the lengths.
        buf = np.zeros((B, S), np.int32)
        for i, p in enumerate(prompts):
            buf[i, : len(p)] = p
        lengths = np.array([len(p) for p in prompts], np.int32)
        out = compiled[B](params, jax.device_put(buf, sh["tokens"]), jax.device_put(lengths, sh["rows"]), key, temp)
        return [np.asarray(jax.device_get(a)) for a in out]

    def windowed(params, prompts, key, temp):
        if 0 not in compiled:
            compiled[0] = _windowed_sampler(spec, cfg, n_new)
        rep = train_mesh.replicated(spec.mesh)
        runs = []
        for row, p in enumerate(prompts):
            buf = np.zeros((1, max(len(p) + n_new, S)), np.int32)
            buf[0, : len(p)] = p
            out = compiled[0](params, jax.device_put(buf, rep), jnp.int32(len(p)), jnp.int32(row), key, temp)
            runs.append([np.asarray(jax.device_get(a)) for a in out])
        toks, iters, res = zip(*runs)
        return np.concatenate(toks, 0), np.concatenate(iters, 1), np.concatenate(res, 1)

    def sample(params, prompts: Sequence[Sequence[int]], *, temperature: float = 0.8, seed: int = 0) -> Generation:
        prompts = _check_prompts(prompts, S)
        if n_new <= 0:
            empty = np.zeros((0, len(prompts)))
            return Generation([[] for _ in prompts], empty.astype(np.int32), empty.astype(np.float32))
        out, iters, res = (cached if cache else windowed)(
            params, prompts, jax.random.PRNGKey(seed), jnp.float32(temperature))
        return Generation(out.tolist(), iters, res)

    return sample


def generate_batch(spec: StateSpec, cfg: Config, params: Any, prompts: Sequence[Sequence[int]], n_new: int, *,
                   temperature: float = 0.8, seed: int = 0, cache: bool = True) -> Generation:
    """One call of `make_sampler(spec, cfg, n_new, cache=cache)`."""
    return make_sampler(spec, cfg, n_new, cache=cache)(params, prompts, temperature=temperature, seed=seed)


def generate(spec: StateSpec, cfg: Config, params: Any, prompt: Sequence[int], n_new: int, *,
             temperature: float = 0.8, seed: int = 0, cache: bool = True) -> list[int]:
    """The `n_new` token ids that follow `prompt` (truncated to its last model.seq_len ids)."""
    return generate_batch(spec, cfg, params, [prompt], n_new, temperature=temperature, seed=seed,
                          cache=cache).tokens[0]
