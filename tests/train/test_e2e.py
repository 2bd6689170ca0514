"""End to end: `deqdist train` on the (2,1,4) mesh of 8 simulated devices, then eval and generate."""
import json
import math

import yaml

from deqdist.config import load_config

from trainutil import STEPS, checkpoint_steps, losses
from tfevents import read_scalars


def test_train_runs_and_loss_falls(reference_run):
    run_dir, p = reference_run
    assert "mesh data=2 x fsdp=1 x tensor=4 on 8 cpu device(s)" in p.stdout
    # tiny regularises every step of the DEQ phase; the warm-up step never computes the Jacobian term
    assert "compiled the explicit train step" in p.stdout and "explicit + jac-reg" not in p.stdout
    assert "compiled the deq + jac-reg train step" in p.stdout
    loss = losses(run_dir)
    assert sorted(loss) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in loss.values())
    first = sum(loss[s] for s in range(1, 5)) / 4
    last = sum(loss[s] for s in range(STEPS - 3, STEPS + 1)) / 4
    assert last < first - 0.5, (first, last)
    # The run ends with the test bits/byte and a sample.
    assert "test bits/byte:" in p.stdout and "sample (temperature" in p.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["step"] == STEPS and 0 < results["test"]["bpb"] < 8
    assert results["sample"].startswith("def ")


def test_metrics_have_solver_stats(reference_run):
    run_dir, _ = reference_run
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in recs if r["kind"] == "train"}
    assert train[1]["deq"] == 0.0 and "explicit_rel_res" in train[1]  # explicit warm-up
    assert "jac_loss" not in train[1]  # no Jacobian term in the warm-up: absent, not a fake 0
    deq = train[STEPS]
    for k in ("loss", "bpb", "lr", "grad_norm", "tok_s", "jac_loss", "fwd_iters", "fwd_rel_res", "fwd_hit_max",
              "bwd_iters", "bwd_rel_res", "bwd_hit_max", "fwd_replica_iters", "fwd_replica_iters_max",
              "bwd_replica_iters", "bwd_replica_iters_max"):
        assert k in deq and math.isfinite(deq[k]), k
    # A replica runs as long as its slowest sample: between the per-sample mean and the max.
    for d in ("fwd", "bwd"):
        assert deq[f"{d}_iters"] <= deq[f"{d}_replica_iters"] <= deq[f"{d}_replica_iters_max"] == deq[f"{d}_iters_max"]
    assert 1 <= deq["fwd_iters"] <= 12 and 1 <= deq["bwd_iters"] <= 12
    assert {(r["kind"], r["step"]) for r in recs if r["kind"] != "train"} == {
        ("valid", 12), ("valid", STEPS), ("test", STEPS), ("spectral", 12), ("spectral", STEPS)}


def test_spectral_radius_is_logged(reference_run):
    """train.spectral_every=12 on the sharded (2,1,4) mesh: the power-method estimate of the
    spectral radius of J_f at z* is logged at steps 12 and 24; on average f is contractive
    there (the forward solves converge in the same run)."""
    run_dir, _ = reference_run
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    spectral = {r["step"]: r for r in recs if r["kind"] == "spectral"}
    assert sorted(spectral) == [12, STEPS]
    for r in spectral.values():
        assert 0 < r["spectral_radius"] < 1 and r["spectral_radius"] <= r["spectral_radius_max"] < 10, r


def test_checkpoints_and_tensorboard_parse(reference_run):
    run_dir, _ = reference_run
    assert checkpoint_steps(run_dir) == [8, 16, 24]
    ck = run_dir / "checkpoints" / "24"
    assert (ck / "state").is_dir() and (ck / "data" / "process_0-of-1.json").is_file()
    assert json.loads((ck / "data" / "process_0-of-1.json").read_text()) == {"next_index": STEPS}
    scalars = read_scalars(run_dir / "tb")
    tb_loss = scalars["train/loss"]
    ref = losses(run_dir)
    assert sorted(tb_loss) == sorted(ref)
    assert all(abs(tb_loss[s] - ref[s]) <= 1e-6 * abs(ref[s]) for s in ref)  # TB stores float32
    assert set(scalars["valid/bpb"]) == {12, STEPS} and set(scalars["test/bpb"]) == {STEPS}
    assert "train/fwd_iters" in scalars and "train/bwd_hit_max" in scalars


def test_run_dir_is_self_describing(reference_run):
    run_dir, _ = reference_run
    cfg = load_config(run_dir / "config.yaml")
    assert (cfg.parallel.data, cfg.parallel.tensor, cfg.model.d_model, cfg.train.steps) == (2, 4, 32, STEPS)
    corpus = json.loads((run_dir / "corpus.json").read_text())
    assert corpus["name"].startswith("builtin-stdlib") and len(corpus["sha256"]) == 64
    log = json.loads((run_dir / "run.json").read_text())
    assert log[0]["mesh"] == {"data": 2, "fsdp": 1, "tensor": 4} and log[0]["start_step"] == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["solver"]["fwd"]["max_iter"] == 12


def test_eval_and_generate_from_checkpoint(reference_run, run_cli):
    run_dir, _ = reference_run
    p = run_cli("eval", run_dir, "--split", "test", "--batches", "2")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert out["step"] == STEPS
    assert abs(out["test"]["bpb"] - results["test"]["bpb"]) < 1e-4
    p = run_cli("generate", run_dir, "--prompt", "import ", "--tokens", "24", "--temperature", "0",
                "parallel.data=8", "parallel.tensor=1")  # another mesh: restore reshards
    assert p.stdout.startswith("import ") and len(p.stdout.rstrip("\n")) >= len("import ")
