"""A stand-in world for the launcher tests: TPU workers with an old python3, ssh hosts, a docker daemon.

Simplified on purpose (the rest executes for real): a TPU worker's dependencies are pre-installed
on its PYTHONPATH (a symlink view of this test venv's site-packages without pip, setuptools and
deqdist), so `tpu_vm.sh setup` builds a real 3.11 venv and pip-installs deqdist itself without
downloading the world; a worker has python3.11 on PATH (on a real tpu-ubuntu2204-base setup gets
it from uv); workers learn the slice from DEQDIST_COORDINATOR/NUM_PROCESSES/PROCESS_ID in their
environment because JAX's own TPU cluster detection needs TPU chips.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STANDIN = HERE / "standins" / "standin.py"
OLD_PYTHON = Path("/root/.pyenv/versions/3.10.13/bin/python3.10")  # the python3 of tpu-ubuntu2204-base
NEW_PYTHON = Path(sys.executable).resolve()  # a 3.11 the worker finds
DEVICES = 4  # simulated CPU devices per worker / host


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def make_world(jax_cache: Path) -> Path:
    w = Path(tempfile.mkdtemp(prefix="deqdist-standins-"))
    w.chmod(0o755)  # containers run as other uids and must reach the shared storage below
    (w / "bin").mkdir()
    for cmd in ("gcloud", "ssh", "scp", "docker"):
        _exe(w / "bin" / cmd, f'#!/bin/sh\nexec {sys.executable} {STANDIN} {cmd} "$@"\n')
    _exe(w / "sudo", '#!/bin/sh\nexec "$@"\n')  # TPU VM users have passwordless sudo (we are root)
    subprocess.run([str(OLD_PYTHON), "-m", "venv", str(w / "py310")], check=True)
    deps = w / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    skip = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "deqdist", "__editable__", "distutils-precedence")
    for entry in site.iterdir():
        if not entry.name.startswith(skip) and entry.suffix != ".pth" and entry.name != "__pycache__":
            (deps / entry.name).symlink_to(entry)
    shared = w / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    jax_cache.chmod(0o1777)
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}", "PYTHONPATH": str(deps),
           "DEQDIST_PEER_TIMEOUT": "10", "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    image = {"bin": {"python3": str(w / "py310" / "bin" / "python3"), "python3.11": str(NEW_PYTHON),
                     "sudo": str(w / "sudo")}, "env": env}
    (w / "tpu-image.json").write_text(json.dumps(image))
    for user in ("alice", "bob"):  # two ssh accounts on this machine, `vm`: the docker launcher's two hosts
        (w / "hosts" / "vm" / "homes" / user).mkdir(parents=True)
    p = subprocess.run(["docker", "build", "-t", "deqdist:test", str(ROOT)], env=launcher_env(w),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return w


def launcher_env(w: Path) -> dict:
    """The launching machine: the stand-ins first on PATH, the test venv for the docker image."""
    env = dict(os.environ)
    env.update(PATH=f"{w / 'bin'}:{env['PATH']}", STANDIN_WORLD=str(w), USER="root",
               STANDIN_IMAGE_BIN=str(Path(sys.executable).parent))
    for k in ("JAX_PLATFORMS", "XLA_FLAGS"):  # the launchers set what the trainers need
        env.pop(k, None)
    return env


def worker_state(w: Path, host: str, user: str = "root") -> dict:
    """The detached trainer's pid and exit code on a TPU worker (None where absent)."""
    d = w / "hosts" / host / "homes" / user / "deqdist" / ".deqdist-train"
    read = lambda n: int((d / n).read_text()) if (d / n).is_file() else None  # noqa: E731
    return {"pid": read("pid"), "rc": read("rc")}


def remove_world(w: Path) -> None:
    """SIGKILL what still runs in the world (its processes carry STANDIN_WORLD), then delete it."""
    from standins.standin import kill_tagged

    kill_tagged(f"STANDIN_WORLD={w}")
    shutil.rmtree(w, ignore_errors=True)
