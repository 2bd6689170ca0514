"""Fixtures of the tests that run `deqdist train` (tests/train, tests/store, tests/runtime).

One uninterrupted reference run on the (2,1,4) mesh is shared by every test; the resume /
kill / reshard tests compare against its losses."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from trainutil import MESH_2_1_4, ROOT, SMALL, cli_cmd, cli_env


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture(scope="session")
def run_cli(jax_cache):
    def run(*args, timeout: float = 300, check_rc: int | None = 0) -> subprocess.CompletedProcess:
        p = subprocess.run(cli_cmd(*args), env=cli_env(jax_cache), cwd=ROOT, capture_output=True, text=True,
                           timeout=timeout)
        if check_rc is not None and p.returncode != check_rc:
            raise AssertionError(f"`deqdist {' '.join(map(str, args))}` exited {p.returncode}, expected "
                                 f"{check_rc}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-5000:]}")
        return p

    return run


@pytest.fixture(scope="session")
def start_cli(jax_cache):
    def start(*args) -> subprocess.Popen:
        return subprocess.Popen(cli_cmd(*args), env=cli_env(jax_cache), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    return start


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, run_cli):
    """The uninterrupted run on the (2,1,4) mesh: (run_dir, completed process)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    p = run_cli("train", "--run-dir", run_dir, *SMALL, *MESH_2_1_4, timeout=900)  # compiles on a loaded machine
    return run_dir, p
