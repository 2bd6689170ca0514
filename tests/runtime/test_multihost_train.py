"""`deqdist train` as 2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo).

Same (2,1,4) mesh and batches as the single-process reference run, so the
losses agree to float tolerance; only process 0 writes logs; each process
checkpoints its own iterator state; the run resumes in a single process.
"""
import json
import subprocess

import pytest
from trainutil import MESH_2_1_4, ROOT, SMALL, checkpoint_steps, cli_cmd, cli_env, losses
from ports import free_port


def test_two_processes_train_like_one(tmp_path, reference_run, run_cli):
    ref = losses(reference_run[0])
    run_dir = tmp_path / "run"
    port = free_port()
    procs = []
    for i in range(2):
        env = cli_env()
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        env["DEQDIST_COORDINATOR"] = f"127.0.0.1:{port}"  # flags and environment are interchangeable
        procs.append(subprocess.Popen(
            cli_cmd("train", "--run-dir", run_dir, "--num-processes", 2, "--process-id", i, "--stop-after", 8,
                    *SMALL, *MESH_2_1_4),
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        finally:
            for q in procs:
                if q.poll() is None:
                    q.kill()
        assert p.returncode == 0, err[-3000:]
    # Decided on files only: the processes' stdout also carries gloo's own chatter.
    runs = json.loads((run_dir / "run.json").read_text())
    assert [(r["processes"], r["start_step"]) for r in runs] == [(2, 0)]
    assert checkpoint_steps(run_dir) == [8]  # --stop-after 8; only process 0 writes logs and seals
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 9))
    for s in got:
        assert got[s] == pytest.approx(ref[s], rel=2e-4, abs=2e-4), s
    data = run_dir / "checkpoints" / "8" / "data"
    assert sorted(p.name for p in data.glob("*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
    assert json.loads((data / "process_1-of-2.json").read_text()) == {"next_index": 8}

    # One process with 8 devices picks the run up (the iterator state is the same on every host).
    run_cli("train", "--run-dir", run_dir, "--stop-after", "4")
    runs = json.loads((run_dir / "run.json").read_text())
    assert [(r["processes"], r["start_step"], r["resumed"]) for r in runs[1:]] == [(1, 8, True)]
    assert checkpoint_steps(run_dir)[-1] == 12
    got = losses(run_dir)
    for s in range(9, 13):
        assert got[s] == pytest.approx(ref[s], rel=2e-4, abs=2e-4), s
