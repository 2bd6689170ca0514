"""Incremental decoding (deqdist.model.decode) against whole-sequence solves of the same model.

Bound asserted: the cached path and the whole-sequence solve are both fixed points of the
same map, each to relative residual `tol`; with f contractive (Lipschitz L ~ 0.7 at init,
tests/model/test_equilibrium.py) two approximate fixed points differ by at most about
2 tol / (1 - L) ||z|| (~7 tol ||z||). The head (LayerNorm + the tied embedding, entries ~0.02
with d = 64, logits O(1)) does not amplify that, so logits agree to ~1e-5 at tol 1e-6 in
float32 plus rounding; we assert 2e-4, an order of magnitude of slack for rounding, not more.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deqdist.deq import DEQConfig
from deqdist.model import DEQTransformer, SolveHooks
from model_presets import get_preset
from deqdist.model.decode import prefill, step
from deqdist.model.layers import rope
from deqdist.solvers import SolverConfig

TIGHT = DEQConfig(fwd=SolverConfig(tol=1e-6, max_iter=100))
ATOL = 2e-4


def teacher_forced_logits(model, prompt, follow, deq_cfg, lengths=None):
    """Logits the cached path gives for prompt (B, P) followed by the given tokens (B, N):
    (B, N+1, V) (the first row from the prompt, then one per fed token) and the per-token
    solver iterations (N, B)."""
    if lengths is None:
        lengths = jnp.full((prompt.shape[0],), prompt.shape[1], jnp.int32)
    first, cache, _ = prefill(model, prompt, lengths, deq_cfg)

    def body(cache, token):
        logits, cache, stats = step(model, cache, token, deq_cfg)
        return cache, (logits, stats.nstep)

    _, (rest, iters) = jax.lax.scan(body, cache, follow.T)
    return jnp.concatenate([first[:, None], jnp.moveaxis(rest, 0, 1)], axis=1), iters


def _right_padded(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return jnp.asarray(out)


def _logits_at(full, starts, n):
    return jnp.stack([full[b, s : s + n] for b, s in enumerate(starts)])


def test_cached_logits_equal_whole_sequence_solve_with_ragged_prompts(tiny_model, tiny_cfg):
    """Right-padded prompts of lengths 5, 12, 1, then 20 fed tokens: every position < seq_len."""
    rng = np.random.default_rng(0)
    lengths, n = [5, 12, 1], 20
    prompts = [rng.integers(0, 256, L) for L in lengths]
    follow = rng.integers(0, 256, (len(lengths), n))
    seqs = [np.concatenate([p, f]) for p, f in zip(prompts, follow)]
    assert max(map(len, seqs)) <= tiny_cfg.seq_len
    full, aux = tiny_model(_right_padded(seqs, max(map(len, seqs))), SolveHooks(deq_cfg=TIGHT))
    assert bool(aux["fwd_stats"].converged.all())
    cached, iters = jax.jit(lambda p, f, l: teacher_forced_logits(tiny_model, p, f, TIGHT, l))(
        _right_padded(prompts, max(lengths)), jnp.asarray(follow[:, :-1]), jnp.asarray(lengths))
    want = _logits_at(full, [L - 1 for L in lengths], n)
    assert cached.shape == want.shape
    np.testing.assert_allclose(np.asarray(cached), np.asarray(want), atol=ATOL, rtol=0)
    # Warm-started one-position solves converge, and in fewer iterations than the whole prompt.
    assert int(iters.min()) >= 1 and float(iters.mean()) < float(aux["fwd_stats"].nstep.mean())


def _sliding_window_attention(base, window):
    def attend(q, k, v):
        q, k = rope(q, base), rope(k, base)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(window - 1, 0))

    return attend


def test_beyond_seq_len_is_the_sliding_window_equilibrium():
    """Past seq_len the cache (ring buffer of seq_len - 1 positions, relative RoPE) computes the
    joint fixed point of the whole sequence under causal attention limited to seq_len positions."""
    S, T, P = 8, 30, 5
    cfg = get_preset("tiny", dropout=0.0, seq_len=S)
    model = DEQTransformer(cfg, rngs=nnx.Rngs(3))
    tokens = jax.random.randint(jax.random.key(4), (2, T), 0, cfg.vocab_size)
    f, params = model.split_block()
    graphdef, _ = nnx.split(model.block)
    block = nnx.merge(graphdef, params)
    x = model.inject(tokens)
    from deqdist.solvers import solve

    attend = _sliding_window_attention(cfg.rope_base, S)
    z, st = solve(lambda z: block(z, x, attend=attend), model.z0(tokens), TIGHT.fwd)
    assert bool(st.converged.all())
    want = model.head(z)[:, P - 1 : T - 1]
    cached, _ = jax.jit(lambda p, f: teacher_forced_logits(model, p, f, TIGHT))(tokens[:, :P], tokens[:, P:T - 1])
    np.testing.assert_allclose(np.asarray(cached), np.asarray(want), atol=ATOL, rtol=0)
    # ... and that is not what the plain causal model gives there (the test can tell them apart).
    plain, _ = model(tokens, SolveHooks(deq_cfg=TIGHT))
    assert float(jnp.abs(plain[:, S:T - 1] - want[:, S - P + 1:]).max()) > 100 * ATOL


def test_bf16_compute_decodes():
    """bf16 projections: f's relative residual has a floor of ~1e-3, so solve to 2e-3; the two
    paths then agree to the bf16 rounding of the logits' inputs (a few 1e-3 relative)."""
    cfg = get_preset("tiny", dropout=0.0, dtype="bfloat16")
    model = DEQTransformer(cfg, rngs=nnx.Rngs(0))
    dc = DEQConfig(fwd=SolverConfig(tol=2e-3, max_iter=60))
    tokens = jax.random.randint(jax.random.key(6), (2, 24), 0, 256)
    full, aux = model(tokens, SolveHooks(deq_cfg=dc))
    cached, iters = jax.jit(lambda t: teacher_forced_logits(model, t[:, :6], t[:, 6:-1], dc))(tokens)
    assert cached.dtype == jnp.float32 and bool(jnp.isfinite(cached).all())
    scale = float(jnp.abs(full).max())
    assert float(jnp.abs(cached - full[:, 5:-1]).max()) < 0.05 * scale
    assert int(iters.max()) < 60
