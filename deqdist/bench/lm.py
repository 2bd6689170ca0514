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

Beside them, for every seed (`--seeds`, default 3: train.seed = data.seed = 0, 1, ...):
the twin at matched work (x k, k the DEQ's mean forward f-evaluations per step in the
same seed's run, rounded) and the reversible mode (solver.grad=reversible) at n = 4, 6
and 8 coupled steps, trained from the start (no explicit warm-up, no Jacobian term: it
needs neither). One table puts test bits/byte (mean, spread and every seed), median
step time over the last steps, the compiled train step's temporary memory
(memory_analysis, as `deqdist bench model`) and f-evaluations side by side. Each run's
figures are printed to stderr as it finishes (and appended to RUN_DIR/bench.jsonl), so
an interrupted bench still leaves what it measured.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import presets
from ..config import ConfigError, load_config
from ..train.evaluate import coverage
from .common import table
from .steptime import interleaved_ms

REVERSIBLE_STEPS = (4, 6, 8)
MODELS = ("deq", "explicit", "explicit-xk", *(f"reversible-{n}" for n in REVERSIBLE_STEPS))

# Steps right after the warm-up that define the "start" iterations.
START_WINDOW = 20
# The last steps that define the "end" iterations and the max_iter share (the window).
END_WINDOW = 200


def _read(run_dir: Path) -> tuple[list[dict], dict]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return recs, json.loads((run_dir / "results.json").read_text())


def summarize(recs: list[dict], results: dict, *, steps: int, warmup: int, wall_s: float,
              tokens_per_step: int | None = None) -> dict:
    """The bench's figures of one run from its metrics records and results.json."""
    train = {r["step"]: r for r in recs if r["kind"] == "train"}
    last = [train[s] for s in sorted(train) if s > steps - min(END_WINDOW, max((steps - warmup) // 2, 1))]
    extra = {}
    for k in ("fwd_fevals", "bwd_fevals", "fwd_rel_res", "bwd_recon_err_max"):
        vals = [r[k] for r in last if r.get(k) is not None]
        extra[k] = float(np.mean(vals)) if vals else None
    rates = [r["tok_s"] for r in last if r.get("tok_s")]
    extra["ms_step"] = float(np.median([tokens_per_step / t for t in rates])) * 1e3 \
        if rates and tokens_per_step else None
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
    return {**out, **extra}


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


def _spread(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1):.4f}"


def comparison(rows: dict[str, list[dict]], *, preset: str, steps: int, seeds: int,
               turns: dict[str, float] | None = None) -> str:
    """Markdown: every model's figures over the seeds, and the issue's questions, each answered per seed.

    `rows`: label -> one summary per seed (as far as the bench got), DEQ under "DEQ". `turns`: label ->
    ms per step of the seed-0 run's final checkpoint, timed in turns with the others (bench.steptime);
    when given, the step-time question is answered from it (the logged times met different loads)."""
    turns = turns or {}
    head = ["model", "test bpb (mean ± sd)", "per seed", "ms/step (logged)", "ms/step (in turns)", "temp MiB",
            "f-evals fwd / bwd", "fwd rel. residual"]
    body = []
    for label, runs in rows.items():
        if not runs:
            continue
        bpb = [r["test_bpb"] for r in runs]
        mean = lambda k: None if any(r.get(k) is None for r in runs) else float(np.mean([r[k] for r in runs]))
        body.append([label, _spread(bpb), " / ".join(f"{b:.4f}" for b in bpb), _fmt(mean("ms_step"), ".0f"),
                     _fmt(turns.get(label), ".0f"), _fmt(runs[0].get("temp_mib"), ".1f"),
                     _fmt(mean("fwd_fevals"), ".1f") + " / " + _fmt(mean("bwd_fevals"), ".1f"),
                     _fmt(mean("fwd_rel_res"), ".1e")])
    deq = rows.get("DEQ", [])
    goals = []
    for label, runs in rows.items():
        n = min(len(runs), len(deq))
        if not label.startswith("reversible") or n == 0:
            continue
        better = sum(runs[i]["test_bpb"] < deq[i]["test_bpb"] for i in range(n))
        if label in turns and "DEQ" in turns:
            faster = n if turns[label] <= turns["DEQ"] else 0
        else:
            faster = sum((runs[i].get("ms_step") or 0) <= (deq[i].get("ms_step") or 0) for i in range(n))
        smaller = (runs[0].get("temp_mib") or 0) <= (deq[0].get("temp_mib") or 0)
        ok = better == faster == n and smaller
        goals.append(f"- {label} vs DEQ: lower test bpb in {better}/{n} seeds, step time no more in {faster}/{n}, "
                     f"temp memory {'no more' if smaller else 'MORE'} -> {'met' if ok else 'MISSED'}")
    for label, runs in rows.items():
        n = min(len(runs), len(deq))
        if label.startswith("explicit twin (x k") and n:
            wins = sum(deq[i]["test_bpb"] < runs[i]["test_bpb"] for i in range(n))
            goals.append(f"- DEQ vs twin at matched work: DEQ lower test bpb in {wins}/{n} seeds")
    done = min((len(r) for r in rows.values()), default=0)
    note = "" if done >= seeds else f" (PARTIAL: {done} of {seeds} seeds complete for every model)"
    return (f"### `{preset}`, {steps} steps, {seeds} seed(s){note}\n\n" + table(head, body) + "\n\n"
            + "\n".join(goals) + "\n")


def _temp_mib(cfg, mode: str) -> float:
    """Temporary memory of the compiled train step this config trains in `mode` (no allocation)."""
    from ..train.step import Steps

    steps = Steps.for_config(cfg)
    jac = mode == "deq" and cfg.train.jac_reg_every > 0 and cfg.train.jac_reg_weight > 0
    compiled = steps.variant(mode, jac).lower(steps.spec.abstract_for_restore(), steps.abstract_batch()).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _labels(n_unroll: int, models: str | None) -> dict[str, str]:
    """Model name -> table label, in run order: the issue's main comparisons first, so that an
    interrupted bench has them."""
    labels = {"deq": "DEQ", "reversible-6": "reversible, n=6", "explicit-xk": "explicit twin (x k)",
              "explicit": f"explicit twin (x{n_unroll})",
              **{f"reversible-{n}": f"reversible, n={n}" for n in REVERSIBLE_STEPS if n != 6}}
    if models is None:
        return labels
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    if not wanted or "deq" not in wanted or any(m not in labels for m in wanted):
        raise ConfigError(f"--models {models!r}: give deq and any of {', '.join(m for m in labels if m != 'deq')}, "
                          f"comma-separated")
    return {k: v for k, v in labels.items() if k in wanted}


def _model_overrides(name: str, steps: int, deq_fevals: float | None) -> tuple[list[str], str]:
    """(overrides, run directory name) of one model of the bench."""
    if name == "explicit-xk":
        k = max(int(round(deq_fevals)), 1)
        return [f"train.warmup_explicit_steps={steps}", f"train.n_unroll={k}"], f"explicit-x{k}"
    if name == "explicit":
        return [f"train.warmup_explicit_steps={steps}"], name
    if name.startswith("reversible"):
        # Trained as what it is from the first step: it needs no warm-up and no Jacobian term.
        return [f"solver.grad=reversible", f"solver.reversible.steps={name.split('-')[1]}",
                "train.warmup_explicit_steps=0", "train.jac_reg_every=0"], name
    return [], name


def run(preset: str = "tiny", steps: int | None = None, run_dir: str | None = None,
        overrides: Sequence[str] = (), seeds: int = 3, models: str | None = None) -> str:
    """Train the DEQ, its twins and the reversible mode (`steps` each, default the preset's) for
    `seeds` seeds and compare them; `overrides` (dotted key=value) apply to every run. `models`:
    a comma-separated subset of MODELS (default: all; deq is always needed, the rest compare with it).

    Run directories are kept under `run_dir` when given (deq/, explicit/, explicit-x<k>/,
    reversible-<n>/; under seed<i>/ with more than one seed), e.g. for
    `deqdist bench model --run-dir RUN_DIR/deq`; else a temporary one.
    """
    cfg_path = presets.path(preset)
    overrides = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    cfg = load_config(cfg_path, overrides)
    steps, warmup = cfg.train.steps, cfg.train.warmup_explicit_steps
    if steps <= warmup:
        raise ConfigError(f"--steps {steps} leaves no DEQ steps after the {warmup}-step "
                          f"explicit warm-up of {preset}; give more steps")
    labels = _labels(cfg.train.n_unroll, models)
    common = overrides + [f"train.steps={steps}", "train.log_every=1", "logging.progress=off", "logging.tensorboard=false",
              "logging.sample_tokens=0", "checkpoint.every=0"]
    rows: dict[str, list[dict]] = {label: [] for label in labels.values()}
    with tempfile.TemporaryDirectory(prefix="deqdist-bench-lm-") as tmp:
        base = Path(run_dir) if run_dir is not None else Path(tmp)
        if run_dir is not None and base.exists() and any(base.iterdir()):
            raise ConfigError(f"{base} exists and is not empty; give a new --run-dir (the bench trains from scratch)")
        bench = _Bench(cfg_path, base, steps, cfg.data.global_batch_size * cfg.model.seq_len, run_dir is not None)
        for seed in range(seeds):
            seeded = common + [f"train.seed={seed}", f"data.seed={seed}"]
            for name, label in labels.items():
                deq_fevals = rows["DEQ"][-1]["fwd_fevals"] if rows["DEQ"] else None
                extra, name_dir = _model_overrides(name, steps, deq_fevals)
                where = base if seeds == 1 else base / f"seed{seed}"
                rows[label].append(bench.train(where / name_dir, seeded + extra, seed, name))
        ks = sorted({r["k"] for r in rows.get("explicit twin (x k)", [])})
        rows = {("explicit twin (x k = " + "/".join(map(str, ks)) + ")" if lab == "explicit twin (x k)" else lab): v
                for lab, v in rows.items()}
        _say("bench lm: timing every model's seed-0 step in turns")
        turns = interleaved_ms({lab: Path(runs[0]["dir"]) for lab, runs in rows.items() if runs})
    out = comparison(rows, preset=preset, steps=steps, seeds=seeds, turns=turns)
    if "explicit" in labels:
        out += "\n" + report(rows["DEQ"][0], rows[labels["explicit"]][0], preset=preset, steps=steps, warmup=warmup,
                             n_unroll=cfg.train.n_unroll, max_iter=cfg.solver.fwd.max_iter)
    return out


class _Bench:
    """Trains one model of the bench, measures its compiled step's memory (once per configuration),
    says its figures and appends them to bench.jsonl."""

    def __init__(self, cfg_path: Path, base: Path, steps: int, tokens_per_step: int, keep: bool):
        self.cfg_path, self.base, self.steps, self.tokens_per_step, self.keep = cfg_path, base, steps, tokens_per_step, keep
        self.memory: dict[tuple, float] = {}

    def train(self, d: Path, overrides: list[str], seed: int, name: str) -> dict:
        from ..train.loop import run_train

        r = _train_one(run_train, self.cfg_path, d, overrides, self.steps, self.tokens_per_step)
        mode = "explicit" if name.startswith("explicit") else "deq"
        cfg = load_config(self.cfg_path, overrides)
        key = (mode, tuple(o for o in overrides if not o.startswith(("train.seed=", "data.seed="))))
        if key not in self.memory:
            self.memory[key] = _temp_mib(cfg, mode)
        r["temp_mib"], r["dir"] = self.memory[key], str(d)
        if name == "explicit-xk":
            r["k"] = cfg.train.n_unroll
        _say(f"bench lm: seed {seed} {d.name}: test bpb {r['test_bpb']:.4f}, {_fmt(r.get('ms_step'), '.0f')} ms/step, "
             f"temp {r['temp_mib']:.1f} MiB, f-evals {_fmt(r.get('fwd_fevals'), '.1f')} / "
             f"{_fmt(r.get('bwd_fevals'), '.1f')}")
        if self.keep:
            with open(self.base / "bench.jsonl", "a") as fh:
                fh.write(json.dumps({"seed": seed, "model": d.name, **r}) + "\n")
        return r


def _train_one(run_train, cfg_path: Path, d: Path, overrides: list[str], steps: int, tokens_per_step: int) -> dict:
    if d.exists():
        raise ConfigError(f"{d} exists; give a new --run-dir (the bench trains from scratch)")
    cfg = load_config(cfg_path, overrides)
    t0 = time.time()
    code = run_train(str(cfg_path), d, overrides)
    if code != 0:
        raise RuntimeError(f"training {d.name} exited {code}")
    recs, results = _read(d)
    return summarize(recs, results, steps=steps, warmup=cfg.train.warmup_explicit_steps, wall_s=time.time() - t0,
                     tokens_per_step=tokens_per_step)
