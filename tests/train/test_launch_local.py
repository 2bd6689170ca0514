"""launch/local.py for real: 2 processes x 4 CPU devices train like 1 process x 8 (the shared reference run),
and when one process is killed the job ends in bounded time and resumes on 1 process x 8 devices."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from trainutil import MESH_2_1_4, ROOT, SMALL, checkpoint_steps, cli_env, losses

PEER_TIMEOUT = 10


def local(run_dir, *train_args, jax_cache) -> subprocess.Popen:
    env = cli_env(jax_cache)
    env["DEQDIST_PEER_TIMEOUT"] = str(PEER_TIMEOUT)
    cmd = [sys.executable, str(ROOT / "launch" / "local.py"), "-n", "2", "-d", "4", "--log-dir",
           str(run_dir.parent / "logs"), "--", "--run-dir", str(run_dir), *SMALL, *MESH_2_1_4, *train_args]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def status(run_dir) -> dict:
    return json.loads((run_dir.parent / "logs" / "status.json").read_text())


def test_two_local_processes_train_like_one(tmp_path, reference_run, jax_cache):
    ref = losses(reference_run[0])
    run_dir = tmp_path / "run"
    p = local(run_dir, "--stop-after", "8", jax_cache=jax_cache)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert status(run_dir)["exit_codes"] == [0, 0]
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 9))
    for s in got:
        assert got[s] == pytest.approx(ref[s], rel=2e-4, abs=2e-4), s


def test_killed_process_ends_the_job_and_it_resumes_on_one_process(tmp_path, reference_run, jax_cache, run_cli):
    ref = losses(reference_run[0])
    run_dir = tmp_path / "run"
    p = local(run_dir, jax_cache=jax_cache)
    try:
        t0 = time.monotonic()
        while 8 not in checkpoint_steps(run_dir):
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 600, "no checkpoint at step 8"
            time.sleep(0.1)
        os.kill(status(run_dir)["pids"][1], signal.SIGKILL)
        killed = time.monotonic()
        out, err = p.communicate(timeout=PEER_TIMEOUT + 120)
    finally:
        if p.poll() is None:
            p.kill()
    assert time.monotonic() - killed < PEER_TIMEOUT + 90
    assert p.returncode == 3
    codes = status(run_dir)["exit_codes"]
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    # The launcher names the lost process, the newest checkpoint and the resume command in one line.
    line = [l for l in err.splitlines() if l.startswith("launch/local.py: error:")]
    assert len(line) == 1 and "lost process 1 of 2" in line[0] and "checkpoint: step" in line[0], err[-2000:]

    r = run_cli("train", "--run-dir", run_dir, "--stop-after", "4")
    assert "resumed from checkpoint at step" in r.stdout
    start = checkpoint_steps(run_dir)[-1] - 4
    assert start >= 8
    got = losses(run_dir)
    for s in range(1, start + 5):
        assert got[s] == pytest.approx(ref[s], rel=2e-4, abs=2e-4), s
