"""Decoding with the KV cache vs the windowed re-solve: trained checkpoint, ragged batches,
meshes, and the `deqdist generate` flags (bf16: tests/model/test_decode.py).

Within seq_len positions both paths sample from the same fixed points to solver tolerance
(tests/model/test_decode.py bounds the logits), so with a tight tolerance greedy
decoding gives the same tokens.
"""
from pathlib import Path

import jax
import numpy as np
from trainutil import SMALL

from deqdist.config import load_config
from deqdist.parallel import make_mesh
from deqdist.train.sample import make_sampler
from deqdist.train.loop import open_run
from deqdist.train.state import init_state, state_spec

TIGHT = ["solver.tol=1e-5", "solver.max_iter=60"]
# Different lengths (right-padded); with NEW new tokens every row stays within seq_len 32.
PROMPTS = [list(b"import os\n"), list(b"def "), list(b"class Foo(object):\n    ")]
NEW = 8


def test_trained_checkpoint_tokens_equal_windowed_for_a_ragged_batch(reference_run):
    """Greedy, and sampled at temperature 1 (each row draws with its own key on both paths):
    sampling diverse text from the briefly trained model checks many more positions' logits."""
    run_dir, _ = reference_run
    session, state, _ = open_run(Path(run_dir), TIGHT)
    try:
        cached_s = make_sampler(session.spec, session.cfg, NEW)
        windowed_s = make_sampler(session.spec, session.cfg, NEW, cache=False)
        for temperature in (0.0, 1.0):
            cached = cached_s(state["params"], PROMPTS, temperature=temperature, seed=1)
            windowed = windowed_s(state["params"], PROMPTS, temperature=temperature, seed=1)
            assert cached.tokens == windowed.tokens, temperature
    finally:
        session.close()
    assert len({tuple(t) for t in cached.tokens}) == len(PROMPTS)  # not a constant output
    assert cached.iters.shape == windowed.iters.shape == (NEW, len(PROMPTS))
    # Every one-position decode step converges. Whole-window solves (the cached path's prompt solve, the
    # first row of `iters`/`residual`, and every windowed step) also span the padding, and one of them
    # ("def " + padding, at 54-60 iterations) sometimes stalls near 1e-2 (open, see the issue 12 note);
    # there only a finite, small residual is required.
    assert float(cached.residual[1:].max()) <= 1e-5
    assert float(cached.residual[0].max()) < 5e-2 and float(windowed.residual.max()) < 5e-2
    # After the prompt solve, each token solves one warm-started position.
    assert cached.iters[1:].mean() < windowed.iters[1:].mean()


def _random_init(overrides, devices):
    cfg = load_config(None, [*SMALL, *overrides])
    mesh = make_mesh(cfg.parallel, devices)
    spec = state_spec(cfg, mesh)
    return cfg, spec, init_state(cfg, spec)["params"]


def _sample(overrides, devices, n_new=10):
    cfg, spec, params = _random_init(overrides, devices)
    return make_sampler(spec, cfg, n_new)(params, PROMPTS + [[7]], temperature=1.0, seed=3)


def test_mesh_equals_single_device():
    """Batch of 4 over data*fsdp = 4, the cache's heads over tensor = 2 vs one device."""
    one = _sample(["parallel.data=1", *TIGHT], jax.devices()[:1])
    mesh = _sample(["parallel.data=2", "parallel.fsdp=2", "parallel.tensor=2", *TIGHT], jax.devices())
    assert mesh.tokens == one.tokens
    np.testing.assert_allclose(mesh.iters, one.iters, atol=1)
    assert float(mesh.residual.max()) <= 1e-5


def test_cli_generate_cached_by_default_and_no_cache_agree(reference_run, run_cli):
    run_dir, _ = reference_run
    args = ["generate", run_dir, "--prompt", "import ", "--tokens", "20", "--temperature", "1", *TIGHT]
    cached = run_cli(*args)
    windowed = run_cli(*args, "--no-cache")
    assert cached.stdout == windowed.stdout and cached.stdout.startswith("import ")
    assert "KV cache, 20 tokens): solver per token: mean" in cached.stderr
    assert "windowed re-solve, 20 tokens)" in windowed.stderr
