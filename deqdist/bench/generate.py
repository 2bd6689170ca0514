"""`deqdist bench generate`: decoding with the KV cache vs re-solving the window, side by side.

For the `tiny` and `small` presets (or the model of `--run-dir`, from its latest
checkpoint): one prompt of 32 tokens, 512 new tokens sampled at temperature 0.8
(greedy text from a small model soon repeats one token, which a warm start
solves in no iterations), the preset's forward solver. Reports tokens/s (the whole generation, prompt solve included,
after one compiling run), the mean and max solver iterations per token and the
largest relative residual, and the speed-up of the cache. Without --run-dir the
parameters are the preset's random initialisation.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from .. import presets
from ..config import load_config
from ..train.sample import make_sampler
from ..train.mesh import build_mesh
from ..train.state import init_state, state_spec
from .common import table
PROMPT, NEW, TEMPERATURE = 32, 512, 0.8


def _time(sample, params, prompt, repeats: int):
    sample(params, [prompt], temperature=TEMPERATURE)  # compile
    times, gen = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        gen = sample(params, [prompt], temperature=TEMPERATURE)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), gen


def _rows(name: str, cfg, params, spec, repeats: int) -> list[list]:
    prompt = list(np.random.default_rng(0).integers(32, 127, PROMPT))  # printable bytes
    rows, speed, toks = [], {}, {}
    for cache in (False, True):
        sec, gen = _time(make_sampler(spec, cfg, NEW, cache=cache), params, prompt, repeats)
        speed[cache], toks[cache] = NEW / sec, gen.tokens[0]
        rows.append([name, "KV cache" if cache else "windowed re-solve", f"{NEW / sec:.1f}",
                     f"{gen.iters.mean():.1f}", int(gen.iters.max()), f"{gen.residual.max():.1e}", "", ""])
    rows[-1][-2] = f"{speed[True] / speed[False]:.1f}x"
    # Both paths solve the same fixed points while the text fits the window (seq_len - prompt tokens)
    # and draw with the same keys, so they sample the same tokens there.
    rows[-1][-1] = f"{_common_prefix(toks[False], toks[True])} (window {cfg.model.seq_len - PROMPT})"
    return rows


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def run(repeats: int = 1, run_dir: str | None = None) -> str:
    rows = []
    if run_dir is not None:
        from ..train.loop import open_run

        session, state, step = open_run(Path(run_dir), ["model.dropout=0.0"])
        try:
            rows += _rows(f"{run_dir} (step {step})", session.cfg, state["params"], session.spec, repeats)
        finally:
            session.close()
        what = f"trained parameters of {run_dir}"
    else:
        for preset in ("tiny", "small"):
            cfg = load_config(presets.path(preset), ["model.dropout=0.0"])
            spec = state_spec(cfg, build_mesh(cfg))
            rows += _rows(f"{preset} (seq {cfg.model.seq_len})", cfg, init_state(cfg, spec)["params"], spec, repeats)
        what = "random-init parameters of the presets"
    head = f"prompt {PROMPT}, {NEW} new tokens at temperature {TEMPERATURE}, {what}, {jax.devices()[0].platform}"
    return (f"### generate: {head}\n\n"
            + table(["model", "path", "tokens/s", "iters/token", "max iters", "max rel. res.", "speed-up",
                     "same tokens"], rows)
            + "\n")
