"""Faults with real processes and files: damaged checkpoints, kill -9 at seeded moments, the lock, a NaN run.

Every test is decided on exit codes and files (metrics.jsonl, run.json,
checkpoints), never on other libraries' output. Damaged copies are made of the
shared reference run, whose losses are also the yardstick for resumed runs.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import signal
import time
from pathlib import Path

from trainutil import MESH_2_1_4, SMALL, STEPS, checkpoint_steps, last_logged_step, losses, wait_for

from deqdist.store.checkpoint import MANIFEST


def _array_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")


def _delete(step_dir: Path) -> None:
    _array_files(step_dir)[0].unlink()


def _truncate(step_dir: Path) -> None:
    f = _array_files(step_dir)[-1]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garble(step_dir: Path) -> None:
    f = step_dir / "data" / "process_0-of-1.json"
    f.write_bytes(b"\x00garbage\xff")


def _flip(step_dir: Path) -> None:
    f = max(_array_files(step_dir), key=lambda p: p.stat().st_size)
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x5A  # same size, different content
    f.write_bytes(bytes(b))


def _unseal(step_dir: Path) -> None:
    (step_dir / MANIFEST).unlink()  # a save killed after orbax finished but before the manifest


DAMAGE = {"deleted file": (_delete, "is missing"), "truncated": (_truncate, "fails its checksum"),
          "garbled iterator state": (_garble, "fails its checksum"), "flipped bytes": (_flip, "fails its checksum"),
          "unsealed": (_unseal, "not sealed")}


def _strict_json_lines(path: Path) -> list[dict]:
    def no_constants(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return [json.loads(l, parse_constant=no_constants) for l in path.read_text().splitlines()]


def test_damaged_newest_checkpoint_falls_back(tmp_path, reference_run, start_cli, run_cli):
    """eval skips each kind of damage on the newest checkpoint with one line and reads the previous one."""
    procs = {}
    for name, (damage, _) in DAMAGE.items():
        run = tmp_path / name.replace(" ", "-")
        shutil.copytree(reference_run[0], run)
        damage(run / "checkpoints" / str(STEPS))
        procs[name] = start_cli("eval", run, "--split", "valid", "--batches", "1")
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err[-3000:])
        skipped = [l for l in err.splitlines() if l.startswith("checkpoint ")]
        assert len(skipped) == 1 and skipped[0].startswith(f"checkpoint {STEPS} skipped: "), (name, err[-2000:])
        assert DAMAGE[name][1] in skipped[0], (name, skipped)
        assert json.loads(out.strip().splitlines()[-1])["step"] == 16, name

    # train resumes from the previous good checkpoint, sets the damaged one aside, and ends like the reference.
    run = tmp_path / "flipped-bytes"
    p = run_cli("train", "--run-dir", run)
    assert f"checkpoint {STEPS} skipped: " in p.stderr
    assert (run / "checkpoints.damaged" / str(STEPS) / "state").is_dir()
    assert json.loads((run / "run.json").read_text())[-1]["start_step"] == 16
    assert checkpoint_steps(run) == [8, 16, 24]
    assert losses(run) == losses(reference_run[0])
    p = run_cli("generate", run, "--prompt", "def ", "--tokens", "4", "--temperature", "0")
    assert "skipped" not in p.stderr


def test_kill_9_at_seeded_moments_resumes_exactly(tmp_path, reference_run, start_cli, run_cli):
    """Killed at start-up, mid-step, mid-save and in the final eval; the same command finishes the run."""
    ref = losses(reference_run[0])
    run = tmp_path / "run"
    cmd = ("train", "--run-dir", run, *SMALL, *MESH_2_1_4)
    rng = random.Random(9)
    ckdir = run / "checkpoints"

    def saving() -> bool:  # orbax is writing, or has written but the manifest is not there yet
        return ckdir.is_dir() and any(".orbax-checkpoint-tmp" in p.name or (p.name.isdigit() and not
                                                                            (p / MANIFEST).exists())
                                      for p in ckdir.iterdir())

    def final_eval() -> bool:
        p = run / "metrics.jsonl"
        return p.is_file() and any(f'"kind": "valid", "step": {STEPS}' in l for l in p.read_text().splitlines())

    early, late = rng.randint(2, 6), rng.randint(17, 20)
    moments = [
        ("start-up", None, rng.uniform(0.05, 1.5)),
        ("start-up", None, rng.uniform(1.5, 6.0)),
        ("mid-step", lambda: last_logged_step(run) >= early, 0),
        ("mid-save", saving, 0),
        ("mid-step", lambda: last_logged_step(run) >= late, 0),
        ("final eval", final_eval, 0),
    ]
    for what, ready, delay in moments:
        proc = start_cli(*cmd)
        if delay:
            time.sleep(delay)
        else:
            wait_for(ready, proc, what=what, timeout=400)
        if proc.poll() is not None:  # finished before the kill; nothing left to interrupt
            assert proc.returncode == 0, proc.communicate()[1][-3000:]
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, what
    run_cli(*cmd)
    assert losses(run) == ref  # every step once, bitwise equal to the uninterrupted run
    assert json.loads((run / "results.json").read_text())["step"] == STEPS
    starts = [r["start_step"] for r in json.loads((run / "run.json").read_text())]
    assert starts[-1] > 0 and starts == sorted(starts)


def test_second_trainer_is_refused_and_a_dead_holder_is_stale(tmp_path, start_cli, run_cli):
    run = tmp_path / "run"
    # The first trainer must still hold the lock when the second one checks it: it has far more steps than it
    # can train meanwhile, and it is stopped (SIGSTOP: alive, holding the lock, using no CPU) during the checks.
    cmd = ("train", "--run-dir", run, *SMALL, *MESH_2_1_4, "train.steps=100000")
    first = start_cli(*cmd)
    try:
        wait_for(lambda: 8 in checkpoint_steps(run), first, what="checkpoint 8")
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first trainer ended before the second one could be refused"
        second = run_cli(*cmd, check_rc=2)
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is being trained by pid {first.pid} on host" in lines[0]
        run_cli("eval", run, "--split", "valid", "--batches", "1")  # readers are welcome on a live run
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert (run / "train.lock").is_file()  # left by the dead holder: stale, taken over below
    run_cli(*cmd, "--stop-after", "2")
    assert json.loads((run / "run.json").read_text())[-1]["resumed"] is True


def test_nan_run_stops_with_its_own_exit_code_and_saves_nothing_non_finite(tmp_path, run_cli):
    run = tmp_path / "run"
    p = run_cli("train", "--run-dir", run, *SMALL, "train.lr=1e30", "train.warmup_steps=0",
                "train.max_bad_steps=3", "checkpoint.every=2", check_rc=4)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "3 consecutive steps with a non-finite" in lines[0]
    recs = _strict_json_lines(run / "metrics.jsonl")
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["loss"] is None for r in train)
    assert sum(r["bad_steps"] for r in train) == 3
    assert not (run / "results.json").exists()
    assert checkpoint_steps(run) == [2]  # taken before the stop; it holds the (unchanged, finite) start
    p = run_cli("eval", run, "--split", "valid", "--batches", "1")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["step"] == 2 and math.isfinite(out["valid"]["loss"])
