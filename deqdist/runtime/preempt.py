"""Preemption: SIGTERM (or Ctrl-C) asks the loop to checkpoint and stop cleanly.

The handler only sets a flag; the loop checks it between steps, so a step is
never cut in half. With several processes the flags are OR-ed across hosts at
each check, so every host stops after the same step even if only one of them
was signalled. Exit codes: 0 after SIGTERM (the run is resumable and nothing
failed), 130 after SIGINT.
"""
from __future__ import annotations

import signal
from types import FrameType

import jax
import numpy as np

EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


class Preemption:
    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self) -> "Preemption":
        for sig in EXIT_CODES:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum

    def requested(self) -> bool:
        local = self.signal is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.signal or 0, np.int32))
        if self.signal is None and np.any(flags):
            self.signal = int(np.max(flags))
        return bool(np.any(flags))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal, 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""
