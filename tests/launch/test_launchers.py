"""Launchers: --help, one-line argument errors (exit 2), and --dry-run's exact commands (nothing touched)."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASH = ["tpu_vm.sh", "gpu_docker.sh", "slurm.sbatch", "slurm_cluster.sh", "slurm_task.sh"]


def launch(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    path = ROOT / "launch" / name
    cmd = [sys.executable, str(path)] if name.endswith(".py") else ["bash", str(path)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def commands(out: str) -> list[list[str]]:
    """The printed command lines (comments dropped), split as a shell would."""
    return [shlex.split(l) for l in out.splitlines() if l.strip() and not l.startswith("#")]


@pytest.mark.parametrize("name", ["local.py", *BASH])
def test_help(name):
    p = launch(name, "--help")
    assert p.returncode == 0 and "usage" in p.stdout.lower() and "--dry-run" in p.stdout


@pytest.mark.parametrize("name, args, says", [
    ("local.py", ["--processes", "0", "--", "--run-dir", "r"], "--processes"),
    ("local.py", ["--", "parallel.data=2"], "--run-dir"),
    ("local.py", ["--", "--run-dir", "r", "--process-id", "1"], "set by the launcher"),
    ("local.py", ["--port", "70000", "--", "--run-dir", "r"], "--port"),
    ("tpu_vm.sh", [], "give a command"),
    ("tpu_vm.sh", ["launch", "--name", "a", "--zone", "z"], "unknown command"),
    ("tpu_vm.sh", ["run", "--zone", "z"], "--name is required"),
    ("tpu_vm.sh", ["run", "--name", "a", "--zone", "z"], "--run-dir"),
    ("tpu_vm.sh", ["babysit", "--name", "a", "--zone", "z", "--max-restarts", "x", "--", "--run-dir", "/r"],
     "--max-restarts"),
    ("gpu_docker.sh", ["--image", "i", "--", "--run-dir", "/r"], "--hosts"),
    ("gpu_docker.sh", ["--hosts", "a,b", "--image", "i", "--", "--run-dir", "rel"], "absolute"),
    ("gpu_docker.sh", ["--hosts", "a", "--image", "i", "--port", "0", "--", "--run-dir", "/r"], "--port"),
    ("gpu_docker.sh", ["--hosts", "a", "--image", "i", "--", "--run-dir", "/r", "--coordinator", "x:1"],
     "set by the launcher"),
    ("gpu_docker.sh", ["--hosts", "u@localhost,gpu2", "--image", "i", "--", "--run-dir", "/r"], "'u@localhost'"),
    ("gpu_docker.sh", ["--hosts", "gpu1,127.0.0.1", "--image", "i", "--", "--run-dir", "/r"], "'127.0.0.1'"),
    ("gpu_docker.sh", ["--hosts", "a", "--image", "i", "--user", "me", "--", "--run-dir", "/r"], "--user"),
    ("tpu_vm.sh", ["run", "--name", "a", "--zone", "z", "--poll", "0", "--", "--run-dir", "/r"], "--poll"),
    ("slurm.sbatch", ["--dry-run", "--", "parallel.data=2"], "--run-dir"),
    ("slurm.sbatch", ["--", "--run-dir", "/r"], "sbatch"),
    ("slurm_cluster.sh", [], "give a command"),
    ("slurm_cluster.sh", ["start", "--nodes", "2"], "unknown argument"),
    ("slurm_task.sh", ["--", "true"], "srun"),
])
def test_bad_arguments_are_one_line_exit_2(tmp_path, name, args, says):
    p = launch(name, *args, cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "error:" in p.stderr and says in p.stderr, p.stderr
    assert not list(tmp_path.iterdir())


def test_local_dry_run(tmp_path):
    run_dir = tmp_path / "run dir"
    p = launch("local.py", "-n", "2", "-d", "4", "--port", "23456", "--dry-run", "--",
               "--run-dir", str(run_dir), "--stop-after", "3", "parallel.data=2", "logging.sample_prompt=a b")
    assert p.returncode == 0, p.stderr
    pre, *procs = commands(p.stdout)
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=8" in pre
    i = pre.index("-m")
    assert pre[i + 1:] == ["deqdist.cli", "info", "parallel.data=2", "logging.sample_prompt=a b",
                           "--run-dir", str(run_dir)]
    assert len(procs) == 2
    for rank, cmd in enumerate(procs):
        assert "JAX_PLATFORMS=cpu" in cmd and "XLA_FLAGS=--xla_force_host_platform_device_count=4" in cmd
        i = cmd.index("-m")
        assert cmd[i + 1:] == ["deqdist.cli", "train", "--run-dir", str(run_dir), "--stop-after", "3",
                               "parallel.data=2", "logging.sample_prompt=a b", "--coordinator", "127.0.0.1:23456",
                               "--num-processes", "2", "--process-id", str(rank), "--init-timeout", "120"]
    logs = re.findall(r"^# process \d, log (.+)$", p.stdout, re.M)
    assert [Path(l).name for l in logs] == ["process_0.log", "process_1.log"]
    assert not run_dir.exists()


def test_local_dry_run_gpus():
    p = launch("local.py", "--gpus", "-n", "2", "--dry-run", "--no-preflight", "--", "--run-dir", "r")
    assert p.returncode == 0, p.stderr
    procs = commands(p.stdout)
    assert len(procs) == 2
    for rank, cmd in enumerate(procs):
        assert "JAX_PLATFORMS=cuda" in cmd and f"JAX_LOCAL_DEVICE_IDS={rank}" in cmd


def test_tpu_vm_dry_run(tmp_path):
    p = launch("tpu_vm.sh", "run", "--name", "pod1", "--zone", "us-central2-b", "--dry-run", "--",
               "--run-dir", "/mnt/shared/runs/x", "--config", "configs/small.yaml", "logging.sample_prompt=a b",
               cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cmds = commands(p.stdout)
    assert all(c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] for c in cmds)
    remote = [c[c.index("--command") + 1] for c in cmds]
    stale, lock, token, check, info, start, status = remote
    assert "kill -TERM $pid" in stale and "kill -9" not in stale.split("[ $i -ge 300 ]")[0]  # SIGTERM first
    assert "/tmp/libtpu_lockfile" in lock
    assert cmds[2][cmds[2].index("--command") - 1] == "--worker=0" and ".reachable" in token
    info = shlex.split(info)
    assert "JAX_PLATFORMS=tpu" in info and info[info.index("deqdist.cli") + 1:info.index(">/dev/null")] == [
        "info", "--distributed", "--run-dir", "/mnt/shared/runs/x", "--config", "configs/small.yaml",
        "logging.sample_prompt=a b"]
    assert info[info.index("deqdist.cli") - 2] == ".venv/bin/python"  # the 3.11 venv of setup, not python3
    # Detached from the ssh session (nohup + setsid, all output to the log), its pid and exit code kept.
    words = shlex.split(start)
    detached = words[words.index("nohup") - 1:words.index("}") + 1]
    assert detached[:4] == ["{", "nohup", "setsid", "bash"] and detached[-2:] == ["&", "}"], detached
    assert detached[detached.index("<") + 1] == "/dev/null" and detached[detached.index("2>&1") - 2] == ">"
    inner = shlex.split(detached[5])
    assert inner[inner.index("deqdist.cli") + 1:inner.index("&")] == [
        "train", "--distributed", "--run-dir", "/mnt/shared/runs/x", "--config", "configs/small.yaml",
        "logging.sample_prompt=a b"]
    assert detached[detached.index(">") + 1].startswith("/mnt/shared/runs/x/logs/")
    assert "deqdist-train: running" in status
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("cmd, expect", [
    ("create", ["queued-resources", "create", "pod1-qr", "--node-id", "pod1", "--spot"]),
    ("stop", ["queued-resources", "delete", "pod1-qr"]),
    ("setup", ["scp", "--worker=all", "pip install -q -e .[tpu]", "deqdist-versions:"]),
])
def test_tpu_vm_other_commands(cmd, expect):
    p = launch("tpu_vm.sh", cmd, "--name", "pod1", "--zone", "z", "--spot", "--dry-run")
    assert p.returncode == 0, p.stderr
    words = []
    for c in commands(p.stdout):  # remote commands split too
        words += [w for part in c for w in (shlex.split(part) if " " in part else [part])]
    flat = " ".join(words)
    assert all(e in flat for e in expect), p.stdout


def test_gpu_docker_dry_run(tmp_path):
    p = launch("gpu_docker.sh", "--hosts", "me@gpu1,gpu2", "--image", "deqdist:1", "--port", "2345", "--dry-run", "--",
               "--run-dir", "/shared/r", "parallel.data=16", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    ssh = [c for c in commands(p.stdout) if c[0] == "ssh"]
    runs = [(c[3], shlex.split(c[4])) for c in ssh if c[4].startswith("docker run")]
    train = [(h, c) for h, c in runs if "train" in c]
    assert [h for h, _ in train] == ["me@gpu1", "gpu2"]
    for rank, (host, c) in enumerate(train):
        for flag in ("--gpus", "--network=host", "--ipc=host", "--init", "--stop-timeout", "--user"):
            assert flag in c, flag
        assert c[c.index("--ulimit") + 1] == "memlock=-1" and c[c.index("-v") + 1] == "/shared/r:/shared/r"
        assert c[c.index("deqdist:1") + 1:] == ["train", "--run-dir", "/shared/r", "parallel.data=16",
                                                "--coordinator", "gpu1:2345", "--num-processes", "2",
                                                "--process-id", str(rank), "--init-timeout", "300"]
    reads = [c[3] for c in ssh if c[4] == "cat /shared/r/.reachable"]
    assert reads == ["me@gpu1", "gpu2"]
    owner = [c[3] for c in ssh if c[4] == "stat -c %u:%g /shared/r"]  # --user: the run dir's owner
    leftovers = [c for c in ssh if "docker rm -f" in c[4]]
    assert owner == ["me@gpu1"] and len(leftovers) == 2
    assert ssh.index(leftovers[-1]) < ssh.index(next(c for c in ssh if c[4].startswith("docker run")))
    assert not list(tmp_path.iterdir())


def test_slurm_dry_run():
    p = launch("slurm.sbatch", "--dry-run", "--", "--run-dir", "/shared/r", "--config", "configs/small.yaml")
    assert p.returncode == 0, p.stderr
    srun = [c for c in commands(p.stdout) if c[0] == "srun"]
    train = srun[-1]
    assert train[train.index("deqdist.cli") + 1:] == ["train", "--distributed", "--run-dir", "/shared/r",
                                                      "--config", "configs/small.yaml"]
    assert "--output=/shared/r/logs/JOBID-%t.log" in train
    task = train[train.index("--output=/shared/r/logs/JOBID-%t.log") + 1:train.index("--")]
    assert Path(task[0]).name == "slurm_task.sh" and task[1:] == ["--exit-file", "/shared/r/logs/JOBID-"]
    assert srun[-2][srun[-2].index("deqdist.cli") + 1:] == ["info", "--distributed", "--run-dir", "/shared/r",
                                                          "--config", "configs/small.yaml"]
    head = (ROOT / "launch" / "slurm.sbatch").read_text()
    assert re.search(r"^#SBATCH --signal=TERM@\d+$", head, re.M)
    # No GPU request and no platform by default: a CPU partition works, the user's JAX_PLATFORMS is kept.
    assert not re.search(r"^#SBATCH .*(gpu|gres)", head, re.M) and not re.search(r"^\s*export .*JAX_PLATFORMS=", head, re.M)


@pytest.mark.parametrize("name", [*BASH, "lib.sh"])
def test_bash_syntax_and_shellcheck(name):
    path = ROOT / "launch" / name
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        p = subprocess.run(["shellcheck", "-x", str(path)], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stdout


def test_local_uses_only_the_standard_library():
    src = (ROOT / "launch" / "local.py").read_text()
    mods = {m.split(".")[0] for m in re.findall(r"^(?:import|from) (\S+)", src, re.M)}
    assert mods <= set(sys.stdlib_module_names) | {"__future__"}, mods


def test_dockerfile_installs_a_pyproject_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("cuda12", "cuda13", "tpu"):
        assert any(r.startswith(f"jax[{name}]") for r in extras[name]), name
    docker = (ROOT / "Dockerfile").read_text()
    assert docker.startswith("# syntax=docker/dockerfile:1\n")
    lines = [l for l in docker.splitlines() if l and not l.startswith("#")]
    installs = [i for i, l in enumerate(lines) if " pip install " in l]
    assert all(lines[i].startswith("RUN --mount=type=cache,target=/root/.cache/pip pip install ") for i in installs)
    deps = [i for i in installs if "--no-deps" not in lines[i]]
    assert len(deps) == 1  # one resolver call, no second list of packages
    extra = re.fullmatch(r"""["']?\.\[(\w+)\]["']?""", lines[deps[0]].rsplit(" ", 1)[1])
    assert extra and extra.group(1) in extras
    # The dependency layer sees pyproject.toml only: a source edit does not reinstall the CUDA wheels.
    source = next(i for i, l in enumerate(lines) if re.match(r"COPY .*\bdeqdist\b", l))
    assert lines.index("COPY pyproject.toml ./") < deps[0] < source < installs[-1]
    assert "JAX_PLATFORMS" not in "\n".join(lines)  # no GPU: deqdist's one line, not a forced-cuda traceback
    assert re.search(r"^FROM python:3\.11", docker, re.M) and 'ENTRYPOINT ["deqdist"]' in docker
    assert re.search(r"^USER (?!root)\w+", docker, re.M) and re.search(r"^VOLUME", docker, re.M)
    assert "--user" in docker  # how a root-owned bind mount becomes writable
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "runs" in ignored
    if shutil.which("hadolint"):
        p = subprocess.run(["hadolint", "Dockerfile"], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stdout
