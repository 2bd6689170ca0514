"""Checkpoints with orbax: train state and every process's grain iterator state, together, checksummed.

Layout: RUN_DIR/checkpoints/<step>/{state,data}/ (orbax's own format) and
<step>/deqdist.sha256.json. `state` is the whole train state (params, AdamW
state, step, RNG); `data` holds one JSON file per process with its iterator
position. Saves are asynchronous (the arrays are copied off the devices before
`save` returns, so the next donated step cannot clobber them) and finish before
the process exits.

Integrity: once orbax has finished a save, process 0 *seals* it: the sha256 of
every file in the step directory (array shards, metadata, iterator states) goes
to the manifest, written atomically. Restore verifies the manifest first and
walks back from the newest checkpoint to the newest one that is sealed, whole
and readable; each one skipped is reported in one line with its reason. A
checkpoint without a manifest was interrupted before it was sealed and is not
trusted. Rotation (checkpoint.keep) is ours, not orbax's: it deletes only
checkpoints older than the `keep` newest sealed ones, so the newest good
checkpoint survives until a newer good one exists.

Restore targets are ShapeDtypeStructs with the *current* mesh's shardings, so
a checkpoint written on one mesh is read straight into another layout.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from deqdist.store.atomic import write_atomic

MANIFEST = "deqdist.sha256.json"
DAMAGED = "damaged"  # RUN_DIR/checkpoints.damaged/<step>: set aside by a resume, kept for inspection


class NoUsableCheckpoint(Exception):
    """Checkpoints exist but none is whole; the message lists why each was skipped."""

    def __init__(self, directory: Path, skipped: list[tuple[int, str]]):
        super().__init__(f"none of the {len(skipped)} checkpoints in {directory} is usable "
                         f"({'; '.join(f'{s}: {w}' for s, w in sorted(skipped, reverse=True))})")


@dataclasses.dataclass
class Scan:
    """The checkpoints of a directory, newest first: `bad` ones (with why) up to the newest verified one,
    which is `candidates[0]`; the older `candidates` are verified only if that one cannot be read."""

    candidates: list[int]
    bad: list[tuple[int, str]]

    def check(self, directory: Path) -> None:
        if self.bad and not self.candidates:
            raise NoUsableCheckpoint(directory, self.bad)


def scan(directory: Path) -> Scan:
    """Verify checkpoints newest first up to the first good one (reads only)."""
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()), reverse=True) \
        if directory.is_dir() else []
    bad = []
    for i, step in enumerate(steps):
        why = verify(directory / str(step))
        if why is None:
            return Scan(steps[i:], bad)
        bad.append((step, why))
    return Scan([], bad)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(step_dir: Path) -> dict[str, Path]:
    return {str(p.relative_to(step_dir)): p for p in sorted(step_dir.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def seal(step_dir: Path) -> None:
    """Write the manifest of a finished save."""
    digests = {name: _file_digest(p) for name, p in _files(step_dir).items()}
    write_atomic(step_dir / MANIFEST, json.dumps({"sha256": digests}, indent=0, sort_keys=True) + "\n")


def is_sealed(step_dir: Path) -> bool:
    return (step_dir / MANIFEST).is_file()


def verify(step_dir: Path) -> str | None:
    """None if every file matches its manifest, else why not (one phrase)."""
    try:
        manifest = json.loads((step_dir / MANIFEST).read_bytes())["sha256"]
    except FileNotFoundError:
        return "not sealed (its save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its checksum manifest is unreadable ({type(e).__name__})"
    if not isinstance(manifest, dict):
        return "its checksum manifest is unreadable"
    present = _files(step_dir)
    for name, digest in manifest.items():
        if name not in present:
            return f"file {name} is missing"
        try:
            if _file_digest(present[name]) != digest:
                return f"file {name} fails its checksum"
        except OSError as e:
            return f"file {name} cannot be read ({e.strerror})"
    return None


def _warn(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


class Checkpoints:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool, create: bool = True):
        self.directory = Path(directory).resolve()
        self.keep = keep
        # Orbax keeps everything; rotate() deletes only what a newer sealed checkpoint has replaced.
        options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=async_save,
                                               create=create)
        self.mngr = ocp.CheckpointManager(self.directory, options=options)
        self._unsealed: list[int] = []  # saved by this process, not yet sealed

    # ------------------------------------------------------------------ steps on disk
    def steps_on_disk(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def latest_step(self) -> int | None:
        """Newest sealed step (not verified: that is restore's job)."""
        sealed = [s for s in self.steps_on_disk() if is_sealed(self.directory / str(s))]
        return sealed[-1] if sealed else None

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, data_iter=None, *, wait: bool = False) -> None:
        self.wait()  # orbax would wait for the previous save anyway; seal it now
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.mngr.save(step, args=ocp.args.Composite(**items), force=True)
        self._unsealed.append(step)
        if wait:
            self.wait()
        else:
            self.poll()

    def poll(self) -> None:
        """Seal (and rotate) finished saves; cheap when nothing is pending. Called once per step."""
        if self._unsealed and not self.mngr.is_saving_in_progress():
            self._seal_finished()

    def _seal_finished(self) -> None:
        self.mngr.check_for_errors()
        if jax.process_index() == 0:
            for step in self._unsealed:
                seal(self.directory / str(step))
            self.rotate()
        self._unsealed = []

    def rotate(self) -> None:
        """Delete checkpoints older than the `keep` newest sealed ones (process 0; plain file deletion)."""
        steps = self.steps_on_disk()
        sealed = [s for s in steps if is_sealed(self.directory / str(s))]
        if len(sealed) <= self.keep:
            return
        oldest_kept = sealed[-self.keep]
        for s in steps:
            if s < oldest_kept:
                shutil.rmtree(self.directory / str(s), ignore_errors=True)

    def wait(self) -> None:
        self.mngr.wait_until_finished()
        if self._unsealed:
            self._seal_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.mngr.close()

    # ------------------------------------------------------------------ restore
    def restore_newest(self, abstract_state: Any, data_iter=None, scanned: "Scan | None" = None
                       ) -> tuple[Any, int | None, list[int]]:
        """(state, step, skipped steps) from the newest good checkpoint; (None, None, []) if there are none.

        Raises NoUsableCheckpoint when checkpoints exist but none is good.
        """
        scanned = scanned or scan(self.directory)
        skipped = list(scanned.bad)
        for i, step in enumerate(scanned.candidates):
            why = verify(self.directory / str(step)) if i > 0 else None
            if why is not None:
                skipped.append((step, why))
                continue
            try:
                state = self.restore(step, abstract_state, data_iter)
            except Exception as e:  # noqa: BLE001 - any failure to read it means: try the previous one
                skipped.append((step, f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})"))
            else:
                for s, why in skipped:
                    _warn(f"checkpoint {s} skipped: {why}")
                return state, step, sorted(s for s, _ in skipped)
        if skipped:
            raise NoUsableCheckpoint(self.directory, skipped)
        return None, None, []

    def set_aside(self, steps: list[int]) -> None:
        """Move damaged checkpoints to checkpoints.damaged/ (process 0) so their steps can be saved again."""
        if not steps:
            return
        if jax.process_index() == 0:
            dest = self.directory.with_name(self.directory.name + "." + DAMAGED)
            dest.mkdir(exist_ok=True)
            for s in steps:
                target = dest / str(s)
                if target.exists():
                    shutil.rmtree(target)
                (self.directory / str(s)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("deqdist: damaged checkpoints set aside")
        self.mngr.reload()

    def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
        """The state at `step`, laid out like `abstract_state`; `data_iter` (if given) is moved to its position."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None and self._has_own_data_file(step):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.mngr.restore(step, args=ocp.args.Composite(**items))
        if data_iter is not None and "data" not in items:
            self._restore_data_other_topology(step, data_iter)
        return out["state"]

    # A checkpoint written by a different number of processes has no file for this
    # process. The pipeline's state is the same on every host (the index of the next
    # global batch; see deqdist/data/pipeline.py), so any process's file positions
    # this host's iterator correctly.
    def _data_dir(self, step: int) -> Path:
        return self.directory / str(step) / "data"

    def _has_own_data_file(self, step: int) -> bool:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return (self._data_dir(step) / name).exists()

    def _restore_data_other_topology(self, step: int, data_iter) -> None:
        files = sorted(self._data_dir(step).glob("process_*-of-*.json"))
        if not files:
            raise FileNotFoundError(f"checkpoint {step} in {self.directory} holds no data-iterator state")
        data_iter.set_state(json.loads(files[0].read_text()))
