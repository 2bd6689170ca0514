"""Checkpoints with orbax: train state and every process's grain iterator state, together.

Layout: RUN_DIR/checkpoints/<step>/{state,data}/ (orbax's own format). `state`
is the whole train state (params, AdamW state, step, RNG); `data` holds one
JSON file per process with its iterator position. Saves are asynchronous
(the arrays are copied off the devices before `save` returns, so the next
donated step cannot clobber them) and finish before the process exits.

Restore targets are ShapeDtypeStructs with the *current* mesh's shardings, so
a checkpoint written on one mesh is read straight into another layout.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool, create: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=create,
        )
        self.mngr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mngr.all_steps())

    def save(self, step: int, state: Any, data_iter=None, *, wait: bool = False) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if step in self.mngr.all_steps():
            return  # already saved (e.g. a preemption right after a periodic save)
        self.mngr.save(step, args=ocp.args.Composite(**items), force=True)
        if wait:
            self.mngr.wait_until_finished()

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

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()
