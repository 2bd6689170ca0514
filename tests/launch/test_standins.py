"""tpu_vm.sh and gpu_docker.sh for real against the local stand-ins of gcloud, ssh and docker
(tests/launch/standins; what they simplify: standin_world.py). Two workers / hosts of 4 simulated
CPU devices train on this machine; decided by exit codes, trainer state files, checkpoints and
metrics.jsonl. The tests of each launcher share one slice / run dir and run in file order."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from standin_world import OLD_PYTHON, ROOT, launcher_env, make_world, remove_world, worker_state
from trainutil import MESH_2_1_4, SMALL, checkpoint_steps, losses, wait_for

pytestmark = pytest.mark.skipif(not OLD_PYTHON.exists() or os.geteuid() != 0,
                                reason="needs root (containers run as other uids) and pyenv's Python 3.10")
# Long enough that a trainer cannot finish before the test stops it; checkpoints every 2 steps.
LONG = [*SMALL, *MESH_2_1_4, "train.steps=100000", "checkpoint.every=2"]
TPU = ["--name", "t1", "--zone", "z"]
WORKERS = ["t1-w-0", "t1-w-1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("jax-cache"))
    yield w
    remove_world(w)


def launcher(world, name, *args, wait=True, timeout=900):
    cmd = ["bash", str(ROOT / "launch" / name), *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=launcher_env(world), cwd=world, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    return subprocess.run(cmd, env=launcher_env(world), cwd=world, capture_output=True, text=True, timeout=timeout)


def stopped(p: subprocess.Popen, sig: int, timeout: float = 600) -> tuple[str, str]:
    p.send_signal(sig)
    return p.communicate(timeout=timeout)


def errors(err: str, prog: str) -> list[str]:
    return [l for l in err.splitlines() if l.startswith(f"{prog}: error:")]


def contiguous(run_dir: Path) -> int:
    """Every step logged once, 1..N without a gap (an exact resume); returns N."""
    steps = sorted(losses(run_dir))
    assert steps == list(range(1, len(steps) + 1)), steps
    return len(steps)


# ------------------------------------------------------------------ tpu_vm.sh
@pytest.fixture(scope="module")
def tpu(world):
    for cmd in ("create", "setup"):
        p = launcher(world, "tpu_vm.sh", cmd, *TPU, "--type", "v4-16")
        assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-3000:])
    return world / "shared" / "tpu"


def tpu_run(world, run_dir, *train, cmd="run", platform="cpu", wait=False):
    return launcher(world, "tpu_vm.sh", cmd, *TPU, "--platform", platform, "--poll", "1", "--",
                    "--run-dir", run_dir, *LONG, *train, wait=wait)


def test_tpu_setup_makes_a_python_311_venv_and_leaves_the_old_python3_alone(world, tpu):
    for w in WORKERS:
        home = world / "hosts" / w / "homes" / "root"
        cfg = (home / "deqdist" / ".venv" / "pyvenv.cfg").read_text()
        assert "version = 3.11" in cfg or "version_info = 3.11" in cfg, cfg
        assert (home / "deqdist" / "deqdist" / "cli.py").is_file()
        assert (home / "deqdist" / "configs" / "tiny.yaml").is_file()  # the presets travel with the package
    assert not list((world / "py310").glob("lib/python3.10/site-packages/deqdist*"))


def test_tpu_training_survives_a_dropped_session_and_sigterm_exits_0(world, tpu):
    first = tpu_run(world, tpu)
    wait_for(lambda: checkpoint_steps(tpu), first, timeout=900, what="a first checkpoint")
    os.killpg(first.pid, signal.SIGKILL)  # the launching machine lost its connection
    first.communicate()
    old = [worker_state(world, w) for w in WORKERS]
    assert all(s["rc"] is None and os.path.exists(f"/proc/{s['pid']}") for s in old), old

    second = tpu_run(world, tpu)  # SIGTERMs the trainers still running (they checkpoint), then resumes
    wait_for(lambda: all(worker_state(world, w)["pid"] not in (None, o["pid"]) for w, o in zip(WORKERS, old)),
             second, timeout=900, what="new trainers")
    resumed_from = checkpoint_steps(tpu)[-1]
    wait_for(lambda: checkpoint_steps(tpu)[-1] > resumed_from, second, timeout=900, what="a checkpoint after resuming")
    out, err = stopped(second, signal.SIGTERM)
    assert second.returncode == 0, err[-3000:]
    assert [worker_state(world, w)["rc"] for w in WORKERS] == [0, 0]
    assert checkpoint_steps(tpu)[-1] == contiguous(tpu)  # SIGTERM saved the last step; nothing logged twice


def test_tpu_killed_worker_ends_run_with_3_and_babysit_resumes_a_preempted_slice(world, tpu):
    p = tpu_run(world, tpu)
    start = checkpoint_steps(tpu)[-1]
    wait_for(lambda: checkpoint_steps(tpu)[-1] > start, p, timeout=900, what="a new checkpoint")
    os.kill(worker_state(world, WORKERS[1])["pid"], signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 3, err[-3000:]
    line = errors(err, "launch/tpu_vm.sh")
    assert len(line) == 1 and "t1-w-1 exit 137" in line[0], err[-3000:]
    assert worker_state(world, WORKERS[1])["rc"] == 128 + signal.SIGKILL

    os.environ["STANDIN_WORLD"] = str(world)  # read when the stand-in is imported
    from standins.standin import preempt  # noqa: PLC0415
    preempt("t1")
    before = checkpoint_steps(tpu)[-1]
    b = tpu_run(world, tpu, cmd="babysit")  # run fails, the slice is PREEMPTED: stop, create, setup, run
    wait_for(lambda: checkpoint_steps(tpu)[-1] > before, b, timeout=1200, what="a checkpoint after recreation")
    out, err = stopped(b, signal.SIGTERM)
    assert b.returncode == 0, err[-3000:]
    assert checkpoint_steps(tpu)[-1] == contiguous(tpu)


def test_tpu_wrong_platform_stops_at_the_preflight_with_2_and_stop_deletes_the_slice(world, tpu):
    before = [worker_state(world, w) for w in WORKERS]
    p = tpu_run(world, tpu, platform="tpu", wait=True)  # CPU workers: JAX has no TPU here
    assert p.returncode == 2, p.stderr[-3000:]
    assert [worker_state(world, w) for w in WORKERS] == before  # no trainer was started
    for cmd in ("babysit", "stop"):  # babysit: the same exit 2 from its run, no recreation
        p = tpu_run(world, tpu, cmd=cmd, platform="tpu", wait=True) if cmd == "babysit" else \
            launcher(world, "tpu_vm.sh", "stop", *TPU)
        assert p.returncode == (2 if cmd == "babysit" else 0), p.stderr[-3000:]
    assert not (world / "tpu" / "t1.json").exists() and not (world / "hosts" / "t1-w-0").exists()


# ------------------------------------------------------------------ gpu_docker.sh
HOSTS = ["--hosts", "alice@vm,bob@vm", "--image", "deqdist:test", "--name", "dq", "--init-timeout", "120"]


def docker_run(world, run_dir, *extra, platform="cpu", wait=False):
    worker = json.loads((world / "tpu-image.json").read_text())["env"]  # devices, peer timeout, compile cache
    env = [a for k, v in worker.items() if k != "PYTHONPATH" for a in ("--env", f"{k}={v}")]
    return launcher(world, "gpu_docker.sh", *HOSTS, "--platform", platform, "--log-dir", run_dir.parent / "logs",
                    *env, "--", "--run-dir", run_dir, *LONG, *extra, wait=wait)


def containers(world) -> dict:
    return {f.stem: json.loads(f.read_text()) for f in (world / "hosts" / "vm" / "docker").glob("*.json")}


@pytest.fixture(scope="module")
def docker_dir(world):
    d = world / "shared" / "docker" / "run"
    d.mkdir(parents=True)
    os.chown(d, 1001, 1001)  # created by an ssh user that is not the image's uid 1000
    d.chmod(0o755)
    leftover = subprocess.run(["ssh", "alice@vm", "docker run --name dq-0 deqdist:test --help"],
                              env=launcher_env(world), capture_output=True)
    assert leftover.returncode == 0 and "dq-0" in containers(world)  # no --rm: its name stays taken
    return d


def test_docker_trains_as_the_run_dir_owner_and_a_killed_container_ends_it_with_3(world, docker_dir):
    p = docker_run(world, docker_dir)
    wait_for(lambda: checkpoint_steps(docker_dir), p, timeout=900, what="a first checkpoint")
    os.kill(containers(world)["dq-1"]["pid"], signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 3, err[-3000:]
    line = errors(err, "launch/gpu_docker.sh")
    assert len(line) == 1 and f"step {checkpoint_steps(docker_dir)[-1]}" in line[0], err[-3000:]
    owners = {f.stat().st_uid for f in docker_dir.rglob("*") if f.name != ".reachable"}  # that one: ssh user
    assert owners == {1001}, owners
    assert containers(world) == {}


def test_docker_resumes_and_sigterm_exits_0(world, docker_dir):
    before = checkpoint_steps(docker_dir)[-1]
    p = docker_run(world, docker_dir)
    wait_for(lambda: checkpoint_steps(docker_dir)[-1] > before, p, timeout=900, what="a checkpoint after resuming")
    out, err = stopped(p, signal.SIGTERM)
    assert p.returncode == 0, err[-3000:]
    assert checkpoint_steps(docker_dir)[-1] == contiguous(docker_dir)
    assert containers(world) == {}


def test_docker_without_a_gpu_fails_the_preflight(world, docker_dir):
    p = docker_run(world, docker_dir, platform="cuda", wait=True)  # asks docker for --gpus; this machine has none
    assert p.returncode == 3, p.stderr[-3000:]
    assert len(errors(p.stderr, "launch/gpu_docker.sh")) == 1 and "preflight" in p.stderr
