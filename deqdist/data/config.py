"""`DataConfig`: the data section of the run config (composed by deqdist.config)."""
from __future__ import annotations

import dataclasses

from deqdist.data.corpus import DEFAULT_FRACTIONS, check_fractions
from deqdist.data.errors import DataError
from deqdist.data.tokens import parse_dtype


@dataclasses.dataclass
class DataConfig:
    corpus: str = "builtin"  # "builtin", a text file/dir, enwik8, .bin/.npy tokens, or a `deqdist prepare` dir
    seq_len: int = 256
    global_batch_size: int = 32  # summed over all hosts; each host reads 1/process_count
    seed: int = 0  # window order and per-epoch offsets; same seed -> same batches
    token_dtype: str = "uint16"  # for raw .bin token files
    vocab_size: int | None = None  # None: 256 for bytes, max id + 1 for tokens
    cache_dir: str | None = None  # None: $DEQDIST_CACHE_DIR or ~/.cache/deqdist
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS  # single-file corpora
    eval_batches: int | None = None  # per evaluation; None: the whole split
    read_threads: int = 2  # grain reader threads per host (0: read in the caller)
    prefetch_batches: int = 4  # batches buffered ahead by the reader threads
    worker_count: int = 0  # grain worker processes (needs a __main__ guard); 0: none

    def validate(self) -> "DataConfig":
        """Raise DataError for a setting no corpus could satisfy; returns self."""
        for name in ("seq_len", "global_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DataError(f"data.{name} is {value!r}; it must be a positive integer")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise DataError(f"data.seed is {self.seed!r}; it must be an integer >= 0")
        for name in ("read_threads", "prefetch_batches", "worker_count"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise DataError(f"data.{name} is {value!r}; it must be an integer >= 0")
        for name in ("vocab_size", "eval_batches"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DataError(f"data.{name} is {value!r}; it must be a positive integer or null")
        parse_dtype(self.token_dtype)
        # YAML gives lists; store the canonical tuple.
        self.split_fractions = check_fractions(self.split_fractions)
        return self

    def per_host_batch(self, process_count: int) -> int:
        if self.global_batch_size % process_count:
            raise DataError(
                f"data.global_batch_size {self.global_batch_size} is not divisible by the {process_count} "
                f"processes; use a multiple of {process_count}"
            )
        return self.global_batch_size // process_count
