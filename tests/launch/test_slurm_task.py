"""launch/slurm_task.sh: the environment each SLURM task gets (GPU binding) and the exit record it
leaves, run for real with the SLURM variables an 8-GPU node would give; no GPU or cluster needed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASK = ROOT / "launch" / "slurm_task.sh"
SHOW_ENV = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
ALL8 = "0,1,2,3,4,5,6,7"


def task(tmp_path: Path, local: int, per_node: str, *args: str, gpus: int = 0, **env: str) -> subprocess.CompletedProcess:
    """slurm_task.sh as task `local` of node 0; `gpus`: how many GPUs a stand-in nvidia-smi lists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: stand-in (UUID: GPU-{i})'\n" for i in range(gpus)))
    smi.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_PROCID": str(local), "SLURM_LOCALID": str(local),
            "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": per_node}
    return subprocess.run(["bash", str(TASK), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def bound(tmp_path: Path, local: int, per_node: str, **env: str) -> dict:
    p = task(tmp_path, local, per_node, "--", *SHOW_ENV, **env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def physical(e: dict) -> list[str]:
    """The GPUs (as the node numbers them) that JAX will use in this task."""
    visible = e["CUDA_VISIBLE_DEVICES"].split(",")
    return [visible[int(i)] for i in e["JAX_LOCAL_DEVICE_IDS"].split(",")]


@pytest.mark.parametrize("per_node, own_gpus, per_task", [
    ("1(x2)", False, 8),  # --gpus-per-node=8: one process drives all eight (the sbatch's default)
    ("8(x2)", True, 1),   # --ntasks-per-node=8 --gpus-per-task=1: SLURM shows each task only its GPU
    ("8(x2)", False, 1),  # --ntasks-per-node=8 --gpus-per-node=8: every task sees all eight
    ("2(x2)", False, 4),  # --ntasks-per-node=2 --gpus-per-node=8: four each
])
def test_the_tasks_of_an_8_gpu_node_use_each_gpu_once(tmp_path, per_node, own_gpus, per_task):
    tasks = int(per_node.split("(")[0])
    used = []
    for local in range(tasks):
        visible = str(local) if own_gpus else ALL8
        e = bound(tmp_path, local, per_node, CUDA_VISIBLE_DEVICES=visible, SLURM_GPUS_ON_NODE="8")
        assert e["CUDA_VISIBLE_DEVICES"] == visible  # left as SLURM set it
        ids = e["JAX_LOCAL_DEVICE_IDS"].split(",")
        assert len(ids) == per_task and all(0 <= int(i) < len(visible.split(",")) for i in ids)
        used += physical(e)
    assert sorted(used, key=int) == ALL8.split(",")


def test_gpus_without_gres_are_counted_with_nvidia_smi(tmp_path):
    e = bound(tmp_path, 3, "4", gpus=4)  # a cluster that does not manage GPUs: no CUDA_VISIBLE_DEVICES
    assert e["JAX_LOCAL_DEVICE_IDS"] == "3" and "CUDA_VISIBLE_DEVICES" not in e


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}])
def test_a_cpu_task_gets_no_device_ids(tmp_path, env):
    e = bound(tmp_path, 1, "2", **env)
    assert "JAX_LOCAL_DEVICE_IDS" not in e  # JAX_PLATFORMS and the rest pass unchanged
    assert "JAX_PLATFORMS" not in e


def test_the_users_device_ids_and_platform_are_kept(tmp_path):
    e = bound(tmp_path, 1, "8", CUDA_VISIBLE_DEVICES=ALL8, JAX_LOCAL_DEVICE_IDS="6", JAX_PLATFORMS="cpu")
    assert e["JAX_LOCAL_DEVICE_IDS"] == "6" and e["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("local, per_node, says", [
    (1, "3", "3 tasks on node 0 cannot share its 8 GPUs evenly"),
    (1, "8x", "SLURM_STEP_TASKS_PER_NODE"),
])
def test_a_binding_that_cannot_work_is_one_line_exit_2(tmp_path, local, per_node, says):
    p = task(tmp_path, local, per_node, "--", "true", CUDA_VISIBLE_DEVICES=ALL8)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and says in p.stderr, p.stderr


def test_outside_srun_is_one_line_exit_2(tmp_path):
    p = subprocess.run(["bash", str(TASK), "--", "true"], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "srun" in p.stderr, p.stderr


@pytest.mark.parametrize("cmd, code", [("exit 0", 0), ("exit 4", 4), ("kill -9 $$", 137)])
def test_the_exit_record_says_how_the_command_ended(tmp_path, cmd, code):
    prefix = tmp_path / "job-"
    p = task(tmp_path, 1, "2", "--exit-file", str(prefix), "--", "sh", "-c", cmd)
    assert p.returncode == code
    recorded, when = (tmp_path / "job-1.exit").read_text().split()
    assert int(recorded) == code and float(when) > 0
    assert not list(tmp_path.glob("*.tmp"))
