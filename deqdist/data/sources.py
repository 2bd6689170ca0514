"""`load_corpus`: turn a corpus spec (a path or "builtin") into a Corpus."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from deqdist.data import prepared, text, tokens
from deqdist.data.builtin import builtin_corpus
from deqdist.data.corpus import DEFAULT_FRACTIONS, Corpus, check_fractions
from deqdist.data.errors import DataError

BUILTIN = "builtin"


def load_corpus(
    spec: str = BUILTIN,
    *,
    vocab_size: int | None = None,
    token_dtype: str = "uint16",
    cache_dir: str | None = None,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> Corpus:
    """Load a corpus, memory-mapped; the kind is detected from the spec.

    - "builtin" (or ""): the Python standard library's source (see builtin.py).
    - a file named `enwik8` of exactly 1e8 bytes: the standard 90M/5M/5M split.
    - a `.bin` (raw ids of `token_dtype`) or `.npy` file: tokens, split by
      `split_fractions` into contiguous spans.
    - a directory made by `deqdist prepare` (it has manifest.json): its shards, verified.
    - a directory with train.bin/val.bin/test.bin (or .npy): those splits.
    - any other file: bytes, contiguous spans; any other directory: bytes of
      all its files, each file assigned to a split by a hash of its path.
    `vocab_size` is checked against the data (token corpora infer it as
    max id + 1 when it is not given; byte corpora default to 256).
    """
    fractions = check_fractions(split_fractions)
    tokens.parse_dtype(token_dtype)
    if vocab_size is not None and int(vocab_size) < 1:
        raise DataError(f"vocab_size {vocab_size} must be a positive integer (or unset)")
    if str(spec).strip() in ("", BUILTIN):
        return builtin_corpus(cache_dir, vocab_size)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"corpus path {str(spec)!r} does not exist; give a text file, a directory, a .bin/.npy token file, "
            f"or {BUILTIN!r}"
        )
    path = path.resolve()
    if path.is_dir():
        if prepared.is_prepared(path):
            return prepared.prepared_corpus(path, vocab_size)
        files = tokens.find_splits(path)
        if files:
            return tokens.dir_corpus(path, files, token_dtype, vocab_size)
        return text.dir_corpus(path, fractions, vocab_size, cache_dir)
    if not path.is_file():
        raise DataError(f"corpus path {path} is neither a regular file nor a directory; give a file or directory")
    if path.suffix in text.TOKEN_SUFFIXES:
        return tokens.file_corpus(path, token_dtype, fractions, vocab_size)
    return text.file_corpus(path, fractions, vocab_size)
