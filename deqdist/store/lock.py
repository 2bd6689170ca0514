"""One trainer per run directory: an advisory lock on RUN_DIR/train.lock.

The lock is an flock on the file, so the kernel drops it when its holder dies
(kill -9 included): a lock file left by a dead process is stale by
construction and the next trainer takes it. The file names the holder (host,
pid, start time) for the message a second trainer prints. It is never deleted
(deleting it would let two trainers lock two different files).
`eval` and `generate` take no lock: they read sealed checkpoints only.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK = "train.lock"


class RunDirLocked(Exception):
    """Another live process trains in this run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_bytes())
        return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _refuse(run_dir: Path) -> RunDirLocked:
    return RunDirLocked(f"{run_dir} is being trained by {_holder(run_dir / LOCK)}; wait for it to finish or stop "
                        f"it, or train in another --run-dir")


def check_unlocked(run_dir: Path) -> None:
    """RunDirLocked if a live trainer holds run_dir; writes nothing."""
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refuse(run_dir) from None
    finally:
        os.close(fd)


class RunLock:
    """Held for the life of the trainer (released by close() or by the process's death)."""

    def __init__(self, run_dir: Path):
        path = run_dir / LOCK
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise _refuse(run_dir) from None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
