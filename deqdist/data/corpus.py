"""The corpus container and the small array helpers every loader shares."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np

from deqdist.data.errors import DataError

SPLITS = ("train", "valid", "test")
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)
BYTE_VOCAB = 256


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """Three 1-D token arrays (usually read-only memmaps) and what they mean.

    `kind` is "bytes" (ids are raw bytes, `decode` works) or "tokens" (ids from
    an external tokenizer we know nothing about). `sha256` is the content hash
    where it comes for free (built-in and directory corpora, whose cache file
    is hashed while it is written); it is None for files used in place, whose
    hashing would cost a full read at every start. A prepared directory
    (deqdist prepare) gives its fingerprint as `sha256`, its tokenizer as
    `codec` (encode/decode text), and each split's `bytes_per_token` of the
    original text, so its loss is also reported in bits per byte.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab_size: int
    name: str
    sha256: str | None = None
    kind: str = "bytes"
    source: str = ""
    codec: Any = None
    bytes_per_token: dict | None = None
    tokenizer: dict | None = None

    def split(self, name: str) -> np.ndarray:
        name = {"val": "valid", "validation": "valid"}.get(name, name)
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of train, valid, test")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {s: int(len(getattr(self, s))) for s in SPLITS}

    def info(self) -> dict:
        """JSON-ready description for the run directory."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "vocab_size": self.vocab_size,
            "dtype": str(self.train.dtype),
            "sizes": self.sizes(),
            "sha256": self.sha256,
            **({"tokenizer": self.tokenizer, "bytes_per_token": self.bytes_per_token} if self.tokenizer else {}),
        }

    def text_codec(self) -> bool:
        """True if ids can be turned into text and back (bytes, or a prepared corpus's tokenizer)."""
        return self.kind == "bytes" or self.codec is not None

    def bpt(self, split: str) -> float | None:
        """Bytes of original text per token of a split (1 for bytes; None if unknown)."""
        if self.kind == "bytes":
            return 1.0
        v = (self.bytes_per_token or {}).get({"val": "valid", "validation": "valid"}.get(split, split))
        return float(v) if v and math.isfinite(v) else None

    def encode(self, text: str) -> list[int]:
        """A prompt as ids: a document's start (a prepared BPE corpus puts its BOS first)."""
        if self.codec is not None:
            return self.codec.document(text)
        if self.kind != "bytes":
            raise DataError(f"corpus {self.name!r} holds tokenizer ids from an unknown tokenizer; give ids instead")
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        if self.codec is not None:
            return self.codec.decode(ids)
        if self.kind != "bytes":
            raise DataError(
                f"corpus {self.name!r} holds tokenizer ids, not bytes; decode them with the tokenizer that made them"
            )
        return decode(ids)


def decode(ids) -> str:
    """Byte ids -> text; ids outside 0..255 and broken UTF-8 become U+FFFD."""
    ids = np.asarray(ids).ravel()
    # 0xFF never occurs in UTF-8, so it decodes to the replacement character.
    ids = np.where((ids >= 0) & (ids < BYTE_VOCAB), ids, 0xFF).astype(np.uint8)
    return ids.tobytes().decode("utf-8", errors="replace")


def mmap(path: str | os.PathLike, dtype, offset: int, length: int) -> np.ndarray:
    """Read-only view of `length` items at byte `offset`, never a copy.

    Every split is mapped on its own (rather than sliced from a bigger map) so
    that its filename/offset describe it exactly and it can be re-opened
    instead of copied when a pipeline is pickled into worker processes.
    """
    if length == 0:
        # mmap cannot map zero bytes.
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(length,))


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(
            f"split fractions {list(fractions)} must be three numbers >= 0 (train > 0) that sum to 1, e.g. [0.9, 0.05, 0.05]"
        )
    return fr


def fraction_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Contiguous train/valid/test lengths for n items; test takes the rounding."""
    n_train = int(n * fractions[0])
    n_valid = int(n * fractions[1])
    return n_train, n_valid, n - n_train - n_valid


def contiguous_splits(path, dtype, header: int, n: int, sizes) -> tuple[np.ndarray, ...]:
    """Map consecutive spans of one file as train/valid/test."""
    itemsize = np.dtype(dtype).itemsize
    out, start = [], 0
    for size in sizes:
        out.append(mmap(path, dtype, header + start * itemsize, size))
        start += size
    assert start == n
    return tuple(out)


def check_ids(arrays: Sequence[np.ndarray], vocab_size: int | None, where: str) -> int:
    """Validate ids are in [0, vocab_size) and return the vocab size to use.

    Scans in chunks so a multi-GB memmap is never materialised; with no
    vocab_size given, the vocab is inferred as max id + 1.
    """
    lo, hi = 0, -1
    chunk = 1 << 24
    for a in arrays:
        for i in range(0, len(a), chunk):
            part = np.asarray(a[i : i + chunk])
            lo = min(lo, int(part.min()))
            hi = max(hi, int(part.max()))
    if lo < 0:
        raise DataError(f"{where} contains negative token id {lo}; token ids must be >= 0")
    if hi < 0:
        raise DataError(f"{where} holds no tokens; give a non-empty corpus")
    if vocab_size is None:
        return hi + 1
    if hi >= vocab_size:
        raise DataError(
            f"{where} contains token id {hi} >= vocab_size {vocab_size}; set vocab_size to at least {hi + 1} "
            f"(or check token_dtype)"
        )
    return int(vocab_size)
