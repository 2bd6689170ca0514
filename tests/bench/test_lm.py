"""`deqdist bench lm` (DEQ vs explicit twin through the trainer) and `deqdist bench model --run-dir`.

The plumbing runs end to end on a shrunken tiny config for a few steps; the
table's arithmetic is checked on hand-made metrics records.
"""
import json
import subprocess
import sys

import pytest

from deqdist import cli
from deqdist.bench.lm import comparison, report, summarize

# 10 steps: 4 explicit warm-up, 6 DEQ; a model small enough to compile quickly.
SHRUNK = ["model.d_model=32", "model.n_heads=2", "model.d_mlp=64", "model.seq_len=32", "data.global_batch_size=8",
          "data.eval_batches=2", "train.test_batches=2", "train.warmup_steps=2", "train.warmup_explicit_steps=4",
          "train.eval_every=0", "train.spectral_every=5", "solver.max_iter=12", "solver.bwd.max_iter=12"]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "deqdist.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_bench_lm_trains_both_models_and_bench_model_reads_the_checkpoint(tmp_path):
    out = tmp_path / "bench"
    p = _cli("bench", "lm", "--steps", 10, "--run-dir", out, "--seeds", 1, "--models", "deq,explicit,reversible-4",
             *SHRUNK)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| DEQ " in p.stdout and "| explicit twin (x12)" in p.stdout and "within 1% of the twin" in p.stdout
    assert "| reversible, n=4" in p.stdout and "- reversible, n=4 vs DEQ: lower test bpb in " in p.stdout
    assert "bench lm: seed 0 reversible-4: test bpb" in p.stderr and "ms/step (in turns)" in p.stdout
    rev = [json.loads(l) for l in (out / "reversible-4" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["fwd_fevals"] == 8.0 and r["deq"] == 1.0 for r in rev if r["kind"] == "train")
    rows = [json.loads(l) for l in (out / "bench.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["deq", "explicit", "reversible-4"] and all(r["temp_mib"] > 0 for r in rows)
    deq = json.loads((out / "deq" / "results.json").read_text())
    twin = json.loads((out / "explicit" / "results.json").read_text())
    assert deq["step"] == twin["step"] == 10
    # Each run is evaluated as the model it trained: the twin never solved for z*.
    assert "fwd_iters" in deq["test"] and "fwd_iters" not in twin["test"]
    assert deq["test"]["tokens"] == twin["test"]["tokens"] > 0
    recs = [json.loads(l) for l in (out / "explicit" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["deq"] == 0.0 for r in recs if r["kind"] == "train")

    # Same directory again: refused before anything is trained or written.
    p = _cli("bench", "lm", "--steps", 10, "--run-dir", out, "--seeds", 1, *SHRUNK)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "exists" in p.stderr

    p = _cli("bench", "model", "--run-dir", out / "deq", "--repeats", 1)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "at step 10 (checkpoint parameters)" in p.stdout and "explicit twin x24" in p.stdout


@pytest.mark.parametrize("argv, message", [
    (["bench", "solvers", "--steps", "5"], "takes no --steps"),
    (["bench", "solvers", "train.steps=5"], "takes no key=value overrides"),
    (["bench", "lm", "--steps", "0"], "--steps must be a positive integer"),
    (["bench", "lm", "--steps", "50"], "leaves no DEQ steps after the 50-step explicit warm-up"),
    (["bench", "model", "--run-dir", "/nonexistent/run"], "/nonexistent/run"),
    (["bench", "lm", "--models", "explicit,reversible-5"], "--models 'explicit,reversible-5': give deq and any of"),
    (["bench", "lm", "--seeds", "0"], "--seeds must be a positive integer"),
    (["bench", "solvers", "--seeds", "2"], "takes no --seeds"),
])
def test_bench_bad_usage_is_one_line_exit_2(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def _records(steps, warmup, iters, hit, rho):
    recs = [{"kind": "train", "step": s, "deq": 0.0} for s in range(1, warmup + 1)]
    for s in range(warmup + 1, steps + 1):
        recs.append({"kind": "train", "step": s, "deq": 1.0, "fwd_iters": iters(s), "bwd_iters": 2 * iters(s),
                     "fwd_hit_max": hit(s)})
    recs += [{"kind": "spectral", "step": s, "spectral_radius": rho(s)} for s in range(100, steps + 1, 100)]
    return recs


def test_summary_windows_and_goals():
    steps, warmup = 1000, 50
    # 5 iterations for the first 20 DEQ steps, 8 for the last 200, one batch with 1/32 at max_iter.
    iters = lambda s: 5.0 if s <= warmup + 20 else (8.0 if s > steps - 200 else 6.0)
    hit = lambda s: 1 / 32 if s == 900 else 0.0
    deq = summarize(_records(steps, warmup, iters, hit, lambda s: s / 2000), {"test": {"bpb": 2.5, "tokens": 4096.0}},
                    steps=steps, warmup=warmup, wall_s=12.0)
    assert (deq["fwd_iters_start"], deq["fwd_iters_end"], deq["bwd_iters_end"]) == (5.0, 8.0, 16.0)
    assert deq["hit_max_end"] == pytest.approx(1 / 32 / 200) and deq["hit_max_end_worst"] == 1 / 32
    assert (deq["rho_start"], deq["rho_end"]) == (0.05, 0.5)
    twin = summarize([{"kind": "train", "step": s, "deq": 0.0} for s in range(1, steps + 1)],
                     {"test": {"bpb": 2.49, "tokens": 4096.0}}, steps=steps, warmup=warmup, wall_s=10.0)
    text = report(deq, twin, preset="tiny", steps=steps, warmup=warmup, n_unroll=12, max_iter=30)
    assert "+0.40% -> met" in text and "1.60x (goal <= 1.5x) -> MISSED" in text
    assert "worst 3.1% (goal <= 1%) -> MISSED" in text


def test_comparison_answers_per_seed():
    run = lambda bpb, ms, mib, f: {"test_bpb": bpb, "ms_step": ms, "temp_mib": mib, "fwd_fevals": f, "bwd_fevals": f,
                                   "fwd_rel_res": 0.1}
    rows = {"DEQ": [run(2.70, 120, 88, 9.2), run(2.69, 125, 88, 9.4)],
            "explicit twin (x k = 9)": [run(2.72, 100, 200, 9), run(2.68, 100, 200, 9)],
            "reversible, n=6": [run(2.64, 90, 26, 12), run(2.60, 90, 26, 12)],
            "reversible, n=8": [run(2.65, 130, 26, 16)]}
    text = comparison(rows, preset="tiny", steps=400, seeds=2)
    cells = {r[0]: r[1:] for r in ([c.strip() for c in l.strip("|").split("|")] for l in text.splitlines()
                                    if l.startswith("| "))}
    assert cells["reversible, n=6"] == ["2.6200 ± 0.0283", "2.6400 / 2.6000", "90", "-", "26.0", "12.0 / 12.0",
                                        "1.0e-01"]
    assert "- reversible, n=6 vs DEQ: lower test bpb in 2/2 seeds, step time no more in 2/2, temp memory no more -> met" in text
    assert "- reversible, n=8 vs DEQ: lower test bpb in 1/1 seeds, step time no more in 0/1" in text and "MISSED" in text
    assert "- DEQ vs twin at matched work: DEQ lower test bpb in 1/2 seeds" in text
    assert "PARTIAL: 1 of 2 seeds" in text

    # Timed in turns, the step-time question is answered from those times, not the logged ones.
    text = comparison(rows, preset="tiny", steps=400, seeds=2,
                      turns={"DEQ": 100.0, "reversible, n=6": 110.0, "reversible, n=8": 90.0})
    assert "- reversible, n=6 vs DEQ: lower test bpb in 2/2 seeds, step time no more in 0/2" in text
    assert "- reversible, n=8 vs DEQ: lower test bpb in 1/1 seeds, step time no more in 1/1" in text
    assert "| 110 " in text
