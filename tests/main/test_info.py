"""`deqdist info`: versions, devices and the config's mesh; exit 2 with one line when the mesh or the
requested platform is not available here."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def info(*args, platforms: str = "cpu") -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS=platforms)
    return subprocess.run([sys.executable, "-m", "deqdist.cli", "info", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_info_reports_the_mesh():
    p = info("--json", "parallel.data=2", "parallel.tensor=4", "model.n_heads=4")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["backend"] == "cpu" and d["device_count"] == 8 and d["devices"] == {"cpu": 8}
    assert (d["process_index"], d["process_count"]) == (0, 1)
    assert d["mesh"] == {"data": 2, "fsdp": 1, "tensor": 4}
    import jax

    assert d["versions"]["jax"] == jax.__version__ and d["versions"]["grain"]


@pytest.mark.parametrize("args, says", [
    (["parallel.data=3"], "there are 8 devices"),
    (["parallel.tensor=8", "model.n_heads=2"], "not divisible"),
])
def test_info_bad_mesh_is_exit_2(args, says):
    p = info(*args)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and says in p.stderr, p.stderr


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="a TPU runtime is installed")
def test_missing_requested_platform_is_exit_2_not_cpu():
    p = info(platforms="tpu")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("deqdist info: error: JAX_PLATFORMS=tpu but JAX could not start it")


def _tpu_chips() -> int:
    from jax._src import hardware_utils

    return hardware_utils.num_available_tpu_chips_and_device_id()[0]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
def test_libtpu_without_a_tpu_chip_runs_on_the_cpu():
    # The tpu extra (for `deqdist compile`) on a CPU host must not turn every command into an error.
    if _tpu_chips():
        pytest.skip("this host has TPU chips")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    p = subprocess.run([sys.executable, "-m", "deqdist.cli", "info", "--json"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["backend"] == "cpu"


def _site_without_libtpu(tmp: Path) -> Path:
    """A copy (by symlinks) of this environment's site-packages without libtpu: what `pip install deqdist` gives."""
    import jax

    site = Path(jax.__file__).resolve().parents[1]
    bare = tmp / "site-packages"
    bare.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith("libtpu"):
            (bare / entry.name).symlink_to(entry)
    return bare


def _bare_env(**extra) -> dict:
    # No JAX_PLATFORMS: the environment a newcomer has. XLA_FLAGS only simulates devices. TPU_* go too: importing
    # JAX beside libtpu (as this test process did) sets TPU_LIBRARY_PATH, which a fresh shell does not have.
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "PYTHONPATH") and not k.startswith(("TPU_", "LIBTPU"))}
    return {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", **extra}


def test_a_plain_install_without_libtpu_runs_on_the_cpu(tmp_path):
    # JAX registers its built-in tpu backend even without libtpu and records "Failed to open libtpu.so";
    # that must not count as a failed accelerator. `python -S` reads only the bare site (no .pth files).
    env = _bare_env(PYTHONPATH=f"{ROOT}{os.pathsep}{_site_without_libtpu(tmp_path)}")
    probe = subprocess.run([sys.executable, "-S", "-c", "import importlib.util as u; print(u.find_spec('libtpu'))"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "None", probe.stderr  # the check is real: libtpu is not importable there
    p = subprocess.run([sys.executable, "-S", "-m", "deqdist.cli", "info", "--json"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["backend"] == "cpu"


@pytest.mark.parametrize("distributed", [False, True], ids=["one-process", "distributed"])
def test_a_requested_platform_without_its_plugin_is_one_line_exit_2(distributed):
    # JAX_PLATFORMS=cuda with no CUDA plugin: jax.devices() fails with a bare AssertionError, not a RuntimeError.
    if importlib.util.find_spec("jax_plugins") is not None:
        pytest.skip("a JAX plugin is installed")
    args = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "1", "--process-id", "0"] \
        if distributed else []
    p = subprocess.run([sys.executable, "-m", "deqdist.cli", "info", *args], env=_bare_env(JAX_PLATFORMS="cuda"),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr[-2000:]
    assert p.stderr.startswith("deqdist info: error: JAX_PLATFORMS=cuda but JAX could not start it")
