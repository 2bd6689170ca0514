"""launch/slurm_cluster.sh without starting a cluster: it says why it cannot run (exit 4), a dry run
writes nothing, and status of a cluster that is not there is exit 3. (Started for real: test_slurm.py.)"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "launch" / "slurm_cluster.sh"


def cluster(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess:
    if not as_nobody:
        return subprocess.run(["bash", str(CLUSTER), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    # Root drops to an unprivileged user, who may not read the checkout: the script comes on stdin.
    with open(CLUSTER) as script:
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s", "--",
                               *args], stdin=script, capture_output=True, text=True, timeout=60, cwd="/")


def test_not_root_is_exit_4_with_the_reason(tmp_path):
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root and there is no setpriv to drop to another user")
    p = cluster("start", "--dir", str(tmp_path / "c"), as_nobody=os.geteuid() == 0)
    assert p.returncode == 4, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "cannot run a SLURM cluster here:" in p.stderr and "root" in p.stderr
    assert not (tmp_path / "c").exists()


def test_dry_run_prints_the_config_and_writes_nothing(tmp_path):
    p = cluster("start", "--dry-run", "--dir", str(tmp_path / "c"))
    assert p.returncode == 0, p.stderr
    conf = dict(l.split("=", 1) for l in p.stdout.splitlines() if "=" in l and not l.startswith(("#", "Node", "Part")))
    assert conf["StateSaveLocation"] == str(tmp_path / "c" / "state")
    assert conf["AuthInfo"] == f"socket={tmp_path / 'c' / 'munge' / 'munge.socket'}"
    assert conf["TaskPlugin"] == "task/none" and "gres" not in p.stdout.lower()
    assert not (tmp_path / "c").exists()


def test_status_of_a_cluster_that_is_not_there_is_exit_3(tmp_path):
    p = cluster("status", "--dir", str(tmp_path))
    assert p.returncode == 3
    assert dict(l.split("=", 1) for l in p.stdout.splitlines())["slurmctld"] == "stopped"
