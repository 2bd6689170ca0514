"""Two local processes x 4 CPU devices (jax.distributed on 127.0.0.1) == one process x 8 devices."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from ports import free_port

WORKER = Path(__file__).with_name("multihost_worker.py")


def _run(nproc: int, out: Path, *extra: str, timeout: float = 300) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(nproc), str(port), str(out), *extra],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(nproc)]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
        for p, log in zip(procs, logs):
            assert p.returncode == 0, log[-3000:]
        return json.loads(out.read_text())
    finally:
        for p in procs:  # never leave a worker behind, also when the run failed or hung
            if p.poll() is None:
                p.kill()
                p.wait()


def test_two_processes_match_one(tmp_path):
    one = _run(1, tmp_path / "one.json")
    # Plain 2-process mesh, and the same with the data axis declared as a DCN factor.
    for name, extra in [("two", ()), ("dcn", ("2",))]:
        two = _run(2, tmp_path / f"{name}.json", *extra)
        np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-6)
        np.testing.assert_allclose(two["grad_norm"], one["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(two["leaf_norms"], one["leaf_norms"], rtol=1e-5)
