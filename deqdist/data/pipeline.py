"""grain pipelines: shuffled, per-host-sharded training batches and eval batches.

Every host builds the same global stream of windows; global batch t is rows
t*B .. t*B+B-1 of it and host i reads only its contiguous block of b = B/n
rows (sub-batch t*n + i). Concatenating the hosts' batches in process order
therefore gives exactly the single-host batch for the same seed, whatever the
number of hosts, and a host never reads another host's windows.

Batches are {"inputs", "targets"}: int32 (b, seq_len), targets = inputs
shifted by one. The iterators are grain DatasetIterators whose state is one
integer (the next batch index), so `get_state`/`set_state` and orbax's
`grain.checkpoint.CheckpointSave/Restore` round-trip exactly.
"""
from __future__ import annotations

import sys

import grain
import jax
import numpy as np

from deqdist.data.config import DataConfig
from deqdist.data.corpus import Corpus
from deqdist.data.errors import DataError
from deqdist.data.windows import EvalStarts, TrainWindows, WindowReader, eval_num_windows

_FROM_CONFIG = object()


def _derive(seed: int, purpose: int, words: int) -> int:
    # Seeds for the shuffle and the offsets come from one user seed via
    # SeedSequence, so seeds s and s+1 give unrelated streams (grain's own
    # per-epoch reseeding is seed + epoch).
    state = np.random.SeedSequence([seed, purpose]).generate_state(words, np.uint32)
    return int(sum(int(v) << (32 * i) for i, v in enumerate(state)))


def _hosts(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if pc < 1 or not 0 <= pi < pc:
        raise DataError(f"process_index {pi} is not in [0, process_count={pc})")
    return pi, pc


def _check_length(split: np.ndarray, seq_len: int, what: str) -> None:
    if len(split) < seq_len + 1:
        raise DataError(
            f"{what} has {len(split)} tokens, fewer than seq_len+1 = {seq_len + 1}; "
            f"lower data.seq_len or use a bigger corpus"
        )


def train_dataset(
    split: np.ndarray, *, seq_len: int, per_host_batch: int, seed: int, process_index: int, process_count: int,
    what: str = "train split",
) -> grain.MapDataset:
    """Infinite MapDataset of this host's training batches (element t = global step t)."""
    _check_length(split, seq_len, what)
    grid = TrainWindows(len(split), seq_len, _derive(seed, 1, 2))
    ds = grain.MapDataset.range(grid.num_windows).shuffle(seed=_derive(seed, 0, 1)).repeat()
    # The index here is the position in the global stream, so the epoch (and
    # with it the offset) is the same for a window whichever host reads it.
    ds = ds.map_with_index(grid.start)
    ds = ds.batch(per_host_batch, drop_remainder=True)
    ds = ds[process_index::process_count]
    return ds.map(WindowReader(split, seq_len))


def eval_dataset(
    split: np.ndarray, *, seq_len: int, per_host_batch: int, process_index: int, process_count: int,
    max_batches: int | None = None, what: str = "eval split",
) -> grain.MapDataset:
    """Finite MapDataset of this host's eval batches, in corpus order.

    Windows are non-overlapping (each id is a target at most once) and spread
    evenly over the whole split (`EvalStarts`), however few batches are read;
    only whole global batches are read, so every batch has a static shape and
    every host runs the same number of steps (at most global_batch - 1 windows
    of the split go unscored when all of it is read).
    """
    _check_length(split, seq_len, what)
    global_batch = per_host_batch * process_count
    num_windows = eval_num_windows(len(split), seq_len)
    num_batches = num_windows // global_batch
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    if num_batches == 0:
        raise DataError(
            f"{what} has {len(split)} tokens = {num_windows} windows of seq_len {seq_len}, fewer than one global "
            f"batch of {global_batch}; lower data.global_batch_size or data.seq_len, or use a bigger corpus"
        )
    starts = EvalStarts(seq_len, per_host_batch, process_index, process_count, num_windows,
                        num_batches * global_batch)
    return grain.MapDataset.range(num_batches).map(starts).map(WindowReader(split, seq_len))


def _iterate(ds: grain.MapDataset, cfg: DataConfig) -> grain.DatasetIterator:
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_batches)
    )
    if cfg.worker_count > 0:
        from absl import flags

        # grain's worker processes read absl flags, which must be parsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS(sys.argv[:1], known_only=True)
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return iter(it_ds)


def train_iterator(
    corpus: Corpus, cfg: DataConfig, *, process_index: int | None = None, process_count: int | None = None
) -> grain.DatasetIterator:
    """Endless, checkpointable iterator of this host's training batches."""
    pi, pc = _hosts(process_index, process_count)
    ds = train_dataset(
        corpus.train, seq_len=cfg.seq_len, per_host_batch=cfg.per_host_batch(pc), seed=cfg.seed,
        process_index=pi, process_count=pc, what=f"train split of corpus {corpus.name!r}",
    )
    return _iterate(ds, cfg)


def eval_iterator(
    corpus: Corpus, cfg: DataConfig, split: str = "valid", *, max_batches: int | None | object = _FROM_CONFIG,
    process_index: int | None = None, process_count: int | None = None,
) -> grain.DatasetIterator:
    """Finite iterator of this host's batches of `split`; a fresh one per evaluation.

    max_batches defaults to cfg.eval_batches; pass None for the whole split.
    """
    pi, pc = _hosts(process_index, process_count)
    data = corpus.split(split)
    ds = eval_dataset(
        data, seq_len=cfg.seq_len, per_host_batch=cfg.per_host_batch(pc), process_index=pi, process_count=pc,
        max_batches=cfg.eval_batches if max_batches is _FROM_CONFIG else max_batches,
        what=f"{split} split of corpus {corpus.name!r}",
    )
    return _iterate(ds, cfg)


def batch_spec(cfg: DataConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Global (shape, dtype) of each batch entry, for building abstract inputs."""
    shape = (cfg.global_batch_size, cfg.seq_len)
    return {"inputs": (shape, np.dtype(np.int32)), "targets": (shape, np.dtype(np.int32))}
