"""Helpers of the trainer tests: the CLI in a subprocess on 8 simulated CPU devices, metrics readers.

The model is shrunk (d_model 32, 4 heads so tensor=4 divides them, seq 32,
batch 16) and runs 24 steps: 4 explicit warm-up steps, then DEQ.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from deqdist.store.checkpoint import MANIFEST

ROOT = Path(__file__).resolve().parents[2]

STEPS = 24
SMALL = [
    "model.d_model=32", "model.n_heads=4", "model.d_mlp=64", "model.seq_len=32",
    "data.global_batch_size=16", "data.eval_batches=2", "train.test_batches=2",
    f"train.steps={STEPS}", "train.warmup_steps=4", "train.warmup_explicit_steps=4", "train.lr=3e-3",
    "train.log_every=1", "train.eval_every=12", "train.spectral_every=12", "checkpoint.every=8", "checkpoint.keep=5",
    "logging.sample_tokens=16", "logging.progress=lines", "solver.max_iter=12", "solver.bwd.max_iter=12",
]
MESH_2_1_4 = ["parallel.data=2", "parallel.fsdp=1", "parallel.tensor=4"]
MESH_8_1_1 = ["parallel.data=8", "parallel.fsdp=1", "parallel.tensor=1"]


def cli_env(cache_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    if cache_dir is not None:
        # Compiled programs are shared between the tests' subprocesses (same HLO -> same executable).
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def cli_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "deqdist.cli", *map(str, args)]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss from metrics.jsonl (each step must appear once)."""
    out: dict[int, float] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            assert rec["step"] not in out, f"step {rec['step']} logged twice in {run_dir}/metrics.jsonl"
            out[rec["step"]] = rec["loss"]
    return out


def last_logged_step(run_dir: Path) -> int:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return 0
    steps = [json.loads(l)["step"] for l in p.read_text().splitlines() if l.endswith("}")]
    return max(steps, default=0)


def wait_for(pred, proc: subprocess.Popen, timeout: float = 240, what: str = "condition") -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before {what}\n{out[-2000:]}\n{err[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the sealed (finished and checksummed) checkpoints."""
    d = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()) \
        if d.is_dir() else []
