"""Byte-level text corpora: one file, enwik8, or a directory of files."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from deqdist.data import cache
from deqdist.data.corpus import BYTE_VOCAB, Corpus, check_ids, contiguous_splits, fraction_sizes
from deqdist.data.errors import DataError

ENWIK8_SIZE = 100_000_000
ENWIK8_SIZES = (90_000_000, 5_000_000, 5_000_000)
TOKEN_SUFFIXES = (".bin", ".npy")
# Formats we recognise but do not read: feeding them as bytes would train on
# compressed or serialised noise without any error.
UNKNOWN_SUFFIXES = frozenset(
    ".gz .bz2 .xz .zst .lz4 .zip .tar .tgz .7z .rar .npz .parquet .arrow .tfrecord .pkl .pickle .pt .pth "
    ".safetensors .h5 .hdf5 .msgpack".split()
)


def check_known(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in UNKNOWN_SUFFIXES:
        raise DataError(
            f"unknown corpus file type {suffix!r} for {path}: decompress or convert it to a text file, "
            f"a directory of text files, or a .bin/.npy token file"
        )


def byte_vocab(arrays: Sequence[np.ndarray], vocab_size: int | None, where: str) -> int:
    # Bytes always fit a vocab of 256; only a smaller requested vocab (e.g.
    # 128 for ASCII) needs the data scanned.
    if vocab_size is None or vocab_size >= BYTE_VOCAB:
        return int(vocab_size or BYTE_VOCAB)
    return check_ids(arrays, vocab_size, where)


def file_corpus(path: Path, fractions, vocab_size: int | None) -> Corpus:
    """One text file split into contiguous train/valid/test spans (enwik8: 90M/5M/5M)."""
    check_known(path)
    n = path.stat().st_size
    if n == 0:
        raise DataError(f"corpus file {path} is empty; give a file with text in it")
    is_enwik8 = path.name == "enwik8" and n == ENWIK8_SIZE
    sizes = ENWIK8_SIZES if is_enwik8 else fraction_sizes(n, fractions)
    splits = contiguous_splits(path, np.uint8, 0, n, sizes)
    return Corpus(
        *splits,
        vocab_size=byte_vocab(splits, vocab_size, str(path)),
        name="enwik8" if is_enwik8 else path.name,
        kind="bytes",
        source=str(path),
    )


def list_files(root: Path, skip_dirs: Iterable[str] = ()) -> list[str]:
    """Sorted POSIX relative paths of the regular, non-hidden files under root."""
    skip = set(skip_dirs)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of skipped trees.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in skip]
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and p.is_file():
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


def split_by_path(rels: Sequence[str], fractions) -> tuple[list[str], list[str], list[str]]:
    """Assign each file to a split by a hash of its relative path.

    A file's split then never depends on which other files exist, so adding
    files to a corpus never moves old ones between train and test.
    """
    out: tuple[list[str], list[str], list[str]] = ([], [], [])
    for rel in rels:
        u = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") / 2.0**64
        k = 0 if u < fractions[0] else 1 if u < fractions[0] + fractions[1] else 2
        out[k].append(rel)
    return out


def files_corpus(
    root: Path, rels: Sequence[str], *, name: str, prefix: str, fractions, vocab_size, cache_dir, extra=None
) -> Corpus:
    """Concatenate `rels` (split by path) into a cached file and map its splits."""
    if not rels:
        raise DataError(f"corpus directory {root} has no (non-hidden) files; put text files in it")
    groups = split_by_path(rels, fractions)
    key = cache.listing_key(root, rels, (fractions, extra))
    cache_file = Path(cache_dir or cache.default_cache_dir()) / f"{prefix}-{key}.bytes"
    meta = cache.concat_cached(cache_file, root, groups)
    if sum(meta["sizes"]) == 0:
        raise DataError(f"corpus directory {root} holds only empty files; put text in them")
    splits = contiguous_splits(cache_file, np.uint8, 0, sum(meta["sizes"]), meta["sizes"])
    return Corpus(
        *splits,
        vocab_size=byte_vocab(splits, vocab_size, str(root)),
        name=name,
        sha256=meta["sha256"],
        kind="bytes",
        source=str(cache_file),
    )


def dir_corpus(root: Path, fractions, vocab_size: int | None, cache_dir) -> Corpus:
    rels = list_files(root)
    for rel in rels:
        check_known(root / rel)
        if rel.endswith(TOKEN_SUFFIXES):
            raise DataError(
                f"{root / rel} looks like a token file inside a text directory; name token splits "
                f"train.bin/val.bin/test.bin (or .npy) or pass the file itself"
            )
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in root.name) or "dir"
    return files_corpus(
        root, rels, name=root.name, prefix=f"dir-{safe}", fractions=fractions, vocab_size=vocab_size, cache_dir=cache_dir
    )
