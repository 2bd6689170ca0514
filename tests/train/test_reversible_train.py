"""The trainer with solver.grad=reversible: its per-step metrics, bitwise resume, and eval / generate
of its checkpoints (windowed, no KV cache; eval adds the fixed-point score)."""
import json

import pytest
from trainutil import MESH_2_1_4, SMALL, losses

REV = SMALL + MESH_2_1_4 + ["solver.grad=reversible", "solver.reversible.steps=5", "solver.reversible.checkpoint_every=3",
                            "train.steps=12", "checkpoint.every=4", "train.eval_every=0", "train.jac_reg_every=0"]


@pytest.fixture(scope="module")
def reversible_run(tmp_path_factory, run_cli):
    run_dir = tmp_path_factory.mktemp("rev") / "run"
    p = run_cli("train", "--run-dir", run_dir, *REV, timeout=900)
    return run_dir, p


def test_metrics_every_step(reversible_run):
    run_dir, p = reversible_run
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    deq = [r for r in recs if r["kind"] == "train" and r["deq"] == 1.0]
    assert [r["step"] for r in deq] == list(range(5, 13))  # after the 4-step explicit warm-up
    for r in deq:
        assert r["fwd_fevals"] == r["bwd_fevals"] == 10.0 and r["fwd_iters"] == 5.0
        assert 0 < r["fwd_rel_res"] < 1 and 0 <= r["bwd_recon_err"] <= r["bwd_recon_err_max"] < 1e-4
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["fwd_iters"] == 5.0  # evaluated with its own coupled steps
    assert "sample" in p.stdout  # the end-of-run sample decoded without a KV cache


def test_resume_is_bitwise(tmp_path, reversible_run, run_cli):
    ref = losses(reversible_run[0])
    run_dir = tmp_path / "run"
    run_cli("train", "--run-dir", run_dir, "--stop-after", "8", *REV)
    p = run_cli("train", "--run-dir", run_dir)
    assert "resumed from checkpoint at step 8" in p.stdout
    assert losses(run_dir) == ref


def test_eval_adds_fixed_point_score_and_generate_is_windowed(reversible_run, run_cli):
    run_dir, _ = reversible_run
    p = run_cli("eval", run_dir, "--split", "test", "--batches", "1")
    assert "reversible: 5 coupled steps at b=0.5 on whole windows" in p.stdout
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["test"]["fwd_iters"] == 5.0 and out["test"]["fixed_point"]["bpb"] > 0
    assert "at the fixed point (broyden" in p.stdout
    p = run_cli("generate", run_dir, "--tokens", "4", "--temperature", "0")
    assert "windowed re-solve: 5 reversible steps per token" in p.stderr and "no KV-cached decoding" in p.stderr
