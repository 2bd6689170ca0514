"""Where windows start, and reading them: the index arithmetic behind the pipeline.

A window is seq_len + 1 consecutive ids (inputs = w[:-1], targets = w[1:]);
windows start seq_len apart, so each id is a target once per pass. Training
shifts the whole window grid by a per-epoch offset so that, over epochs, every
position of the corpus is seen at every position of the context.
"""
from __future__ import annotations

import dataclasses
import mmap as _mmap

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    # splitmix64 finaliser: a cheap, well-spread hash of (seed, epoch), so
    # fetching an element never has to build an RNG object.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclasses.dataclass(frozen=True)
class TrainWindows:
    """Training grid over n ids: `num_windows` starts, shifted per epoch."""

    n: int
    seq_len: int
    offset_seed: int

    @property
    def num_windows(self) -> int:
        nw = (self.n - 1) // self.seq_len
        # Give up one window of room when there are several, so the offset can
        # take every value in [0, seq_len).
        return nw - 1 if nw >= 2 else nw

    @property
    def max_offset(self) -> int:
        slack = self.n - 1 - self.num_windows * self.seq_len
        return min(slack, self.seq_len - 1)

    def offset(self, epoch: int) -> int:
        return _mix64(self.offset_seed ^ _mix64(epoch)) % (self.max_offset + 1)

    def start(self, position: int, window: int) -> int:
        """Start of window `window` drawn at global stream position `position`."""
        return window * self.seq_len + self.offset(position // self.num_windows)


def eval_num_windows(n: int, seq_len: int) -> int:
    return max(0, (n - 1) // seq_len)


@dataclasses.dataclass(frozen=True)
class EvalStarts:
    """Starts of this host's rows of global eval batch t: `read` windows spread over the split.

    The split's `num_windows` non-overlapping windows (starts seq_len apart) are
    sampled at a fixed stride: eval window i is window floor(i * num_windows / read),
    so a short evaluation covers the whole split evenly instead of its beginning, and
    it is the same for every run of a corpus. With read == num_windows it is the
    whole split in order. Global rows are laid out batch by batch, host by host.
    """

    seq_len: int
    per_host_batch: int
    process_index: int
    process_count: int
    num_windows: int
    read: int

    def __call__(self, t: int) -> np.ndarray:
        first = (t * self.process_count + self.process_index) * self.per_host_batch
        i = first + np.arange(self.per_host_batch, dtype=np.int64)
        return (i * self.num_windows // self.read) * self.seq_len


class WindowReader:
    """Map an array of window starts to {"inputs", "targets"} int32 batches."""

    def __init__(self, array: np.ndarray, seq_len: int):
        self.array = array
        self.seq_len = seq_len

    def __call__(self, starts) -> dict[str, np.ndarray]:
        if hasattr(self.array, "windows"):  # several shards back to back (data.prepared.ShardedTokens)
            w = self.array.windows(starts, self.seq_len + 1).astype(np.int32)
            return {"inputs": np.ascontiguousarray(w[:, :-1]), "targets": np.ascontiguousarray(w[:, 1:])}
        view = np.lib.stride_tricks.sliding_window_view(self.array, self.seq_len + 1)
        # Fancy indexing a strided view copies only the rows asked for.
        w = np.asarray(view[np.asarray(starts, dtype=np.int64)]).astype(np.int32)
        return {"inputs": np.ascontiguousarray(w[:, :-1]), "targets": np.ascontiguousarray(w[:, 1:])}

    def __getstate__(self):
        a = self.array
        # Pickling a memmap copies all of its data; a map made directly on a
        # file (base is the mmap, not another array) can be re-opened instead.
        if isinstance(a, np.memmap) and isinstance(a.base, _mmap.mmap) and a.filename:
            return {"seq_len": self.seq_len, "mapped": (a.filename, a.dtype.str, a.offset, len(a))}
        return {"seq_len": self.seq_len, "array": a}

    def __setstate__(self, state):
        self.seq_len = state["seq_len"]
        if "mapped" in state:
            path, dtype, offset, length = state["mapped"]
            self.array = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=(length,))
        else:
            self.array = state["array"]
