"""Joining a multi-process job: malformed --coordinator is exit 2 before anything starts; a peer that
never comes ends the waiting process with exit 3 and one line within --init-timeout."""
from __future__ import annotations

import subprocess
import time

import pytest
from trainutil import ROOT, cli_cmd, cli_env
from ports import free_port


def _deqdist_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith("deqdist")]


@pytest.mark.parametrize("coordinator, says", [
    ("127.0.0.1", "has no port"),
    ("127.0.0.1:0", "outside 1-65535"),
    ("127.0.0.1:70000", "outside 1-65535"),
    ("no-such-host.invalid:1234", "does not resolve"),
])
def test_malformed_coordinator_is_exit_2(tmp_path, coordinator, says):
    run_dir = tmp_path / "run"
    p = subprocess.run(cli_cmd("train", "--run-dir", run_dir, "--coordinator", coordinator, "--num-processes", 2,
                               "--process-id", 1), env=cli_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.count("\n") == 1 and says in p.stderr and "--coordinator HOST:PORT" in p.stderr
    assert not run_dir.exists()


def test_missing_coordinator_gives_up_at_init_timeout(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    t0 = time.monotonic()
    p = subprocess.run(cli_cmd("train", "--run-dir", run_dir, "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", 2, "--process-id", 1, "--init-timeout", 10),
                       env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 3, p.stderr[-3000:]
    assert took < 60
    last = _deqdist_lines(p.stderr)[-1]
    assert last.startswith("deqdist train: error: process 1 of 2 gave up after") and "--init-timeout" in last
    assert f"no coordinator answered at 127.0.0.1:{port}" in last
    assert not run_dir.exists()


def test_missing_peer_gives_up_with_progress_lines(tmp_path):
    """Process 0 runs the coordinator; process 1 never comes. DEQDIST_INIT_TIMEOUT works like the flag."""
    run_dir = tmp_path / "run"
    env = cli_env()
    env["DEQDIST_INIT_TIMEOUT"] = "20"
    t0 = time.monotonic()
    p = subprocess.run(cli_cmd("train", "--run-dir", run_dir, "--coordinator", f"127.0.0.1:{free_port()}",
                               "--num-processes", 2, "--process-id", 0), env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 3, p.stderr[-3000:]
    assert time.monotonic() - t0 < 70
    lines = _deqdist_lines(p.stderr)
    assert any(l.startswith("deqdist: waiting for the other processes at 127.0.0.1:") and "process 0 of 2" in l
               for l in lines[:-1]), lines
    assert "not all 2 processes joined the coordinator" in lines[-1]
    assert not run_dir.exists()
