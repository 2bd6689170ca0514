"""`deqdist bench lm`: the DEQ-Transformer against its explicit twin, both trained by the trainer.

Two `deqdist train` runs of one preset on its corpus (the built-in one for the
presets that use it), identical but for how z is obtained from f after the
explicit warm-up: the twin is the same config with
train.warmup_explicit_steps = train.steps, so it never leaves the warm-up
(train.n_unroll applications of f, ordinary backprop). Same initial
parameters, data order, seeds, steps, schedule and Jacobian penalty; the
final evaluation of each run reads the same test windows.

Reported side by side: test bits/byte, forward/backward solver iterations
right after the warm-up and over the last steps, the share of samples at
max_iter, the spectral radius of J_f at z*, and wall time. The per-step
figures come from each run's metrics.jsonl (the bench logs every step).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import presets
from ..config import ConfigError, load_config
from ..train.evaluate import coverage
from .common import table

# Steps right after the warm-up that define the "start" iterations.
START_WINDOW = 20
# The last steps that define the "end" iterations and the max_iter share (the window).
END_WINDOW = 200


def _read(run_dir: Path) -> tuple[list[dict], dict]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return recs, json.loads((run_dir / "results.json").read_text())


def summarize(recs: list[dict], results: dict, *, steps: int, warmup: int, wall_s: float) -> dict:
    """The bench's figures of one run from its metrics records and results.json."""
    train = {r["step"]: r for r in recs if r["kind"] == "train"}
    deq = [train[s] for s in sorted(train) if s > warmup and "fwd_iters" in train[s]]
    end = min(END_WINDOW, max((steps - warmup) // 2, 1))
    spectral = [r for r in sorted((r for r in recs if r["kind"] == "spectral"), key=lambda r: r["step"])
                if r["step"] > warmup]
    test = results["test"]
    out = {"test_bpb": test["bpb"], "test_read": coverage(test) if "split_windows" in test else None,
           "test_bytes": test["tokens"], "wall_s": wall_s, "end_window": end,
           "test_fwd_iters": test.get("fwd_iters"), "test_hit_max": test.get("fwd_hit_max")}
    if deq:
        first, last = deq[:START_WINDOW], [r for r in deq if r["step"] > steps - end]
        for k in ("fwd_iters", "bwd_iters"):
            out[f"{k}_start"] = float(np.mean([r[k] for r in first]))
            out[f"{k}_end"] = float(np.mean([r[k] for r in last]))
        out["hit_max_end"] = float(np.mean([r["fwd_hit_max"] for r in last]))
        out["hit_max_end_worst"] = float(np.max([r["fwd_hit_max"] for r in last]))
    if spectral:
        out["rho_start"], out["rho_end"] = spectral[0]["spectral_radius"], spectral[-1]["spectral_radius"]
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report(deq: dict, twin: dict, *, preset: str, steps: int, warmup: int, n_unroll: int, max_iter: int) -> str:
    """Markdown: the side-by-side table and the issue's goals, each marked met or missed."""
    end = deq["end_window"]
    rows = []
    for name, r in (("DEQ", deq), (f"explicit twin (x{n_unroll})", twin)):
        rows.append([
            name, _fmt(r["test_bpb"], ".4f"),
            _fmt(r.get("fwd_iters_start"), ".1f") + " / " + _fmt(r.get("bwd_iters_start"), ".1f"),
            _fmt(r.get("fwd_iters_end"), ".1f") + " / " + _fmt(r.get("bwd_iters_end"), ".1f"),
            _fmt(r.get("hit_max_end"), ".2%") + " (worst " + _fmt(r.get("hit_max_end_worst"), ".1%") + ")",
            _fmt(r.get("test_fwd_iters"), ".1f") + ", " + _fmt(r.get("test_hit_max"), ".1%"),
            _fmt(r.get("rho_start"), ".3f") + " -> " + _fmt(r.get("rho_end"), ".3f"),
            f"{r['wall_s']:.0f}",
        ])
    head = ["model", "test bpb", f"fwd/bwd iters, first {START_WINDOW} DEQ steps",
            f"fwd/bwd iters, last {end} steps", f"samples at max_iter={max_iter}, last {end} steps",
            "test: fwd iters, at max_iter", "spectral radius J_f(z*)", "wall s"]
    gap = deq["test_bpb"] / twin["test_bpb"] - 1
    goals = [f"- DEQ test bpb within 1% of the twin's: {gap:+.2%} -> {'met' if abs(gap) <= 0.01 else 'MISSED'}"]
    if "fwd_iters_end" in deq:
        ratio = deq["fwd_iters_end"] / deq["fwd_iters_start"]
        goals.append(f"- forward iterations, last {end} steps / first {START_WINDOW} after warm-up: {ratio:.2f}x "
                     f"(goal <= 1.5x) -> {'met' if ratio <= 1.5 else 'MISSED'}")
        worst = deq["hit_max_end_worst"]
        goals.append(f"- samples at max_iter in any batch of the last {end} steps: worst {worst:.1%} "
                     f"(goal <= 1%) -> {'met' if worst <= 0.01 else 'MISSED'}")
    read = f"{int(deq['test_bytes']):,} bytes" + (f", {deq['test_read']}" if deq.get("test_read") else "")
    return (f"### `{preset}`, {steps} steps ({warmup} explicit warm-up), test split: {read}\n\n"
            + table(head, rows) + "\n\n" + "\n".join(goals) + "\n")


def run(preset: str = "tiny", steps: int | None = None, run_dir: str | None = None,
        overrides: Sequence[str] = ()) -> str:
    """Train the DEQ and its twin (`steps` each, default the preset's) and compare them;
    `overrides` (dotted key=value) apply to both runs.

    Both run directories are kept under `run_dir` (deq/, explicit/) when given,
    e.g. for `deqdist bench model --run-dir RUN_DIR/deq`; else a temporary one.
    """
    from ..train.loop import run_train

    cfg_path = presets.path(preset)
    overrides = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    cfg = load_config(cfg_path, overrides)
    steps = cfg.train.steps
    if steps <= cfg.train.warmup_explicit_steps:
        raise ConfigError(f"--steps {steps} leaves no DEQ steps after the {cfg.train.warmup_explicit_steps}-step "
                          f"explicit warm-up of {preset}; give more steps")
    common = overrides + [f"train.steps={steps}", "train.log_every=1", "logging.progress=off", "logging.tensorboard=false",
              "logging.sample_tokens=0", "checkpoint.every=0"]
    twin = [f"train.warmup_explicit_steps={steps}"]
    with tempfile.TemporaryDirectory(prefix="deqdist-bench-lm-") as tmp:
        base = Path(run_dir) if run_dir is not None else Path(tmp)
        out = {}
        for name, extra in (("deq", []), ("explicit", twin)):
            d = base / name
            if d.exists():
                raise ConfigError(f"{d} exists; give a new --run-dir (the bench trains from scratch)")
            t0 = time.time()
            code = run_train(str(cfg_path), d, common + extra)
            if code != 0:
                raise RuntimeError(f"training the {name} model exited {code}")
            recs, results = _read(d)
            out[name] = summarize(recs, results, steps=steps, warmup=cfg.train.warmup_explicit_steps,
                                  wall_s=time.time() - t0)
    return report(out["deq"], out["explicit"], preset=preset, steps=steps, warmup=cfg.train.warmup_explicit_steps,
                  n_unroll=cfg.train.n_unroll, max_iter=cfg.solver.fwd.max_iter)
