"""Pre-tokenised corpora in nanoGPT layout: raw `.bin` ids or `.npy` arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deqdist.data.corpus import Corpus, check_ids, contiguous_splits, fraction_sizes, mmap
from deqdist.data.errors import DataError

TOKEN_DTYPES = ("uint16", "uint32")
SPLIT_STEMS = {"train": ("train",), "valid": ("val", "valid", "validation"), "test": ("test",)}


def parse_dtype(name: str) -> np.dtype:
    if str(name) not in TOKEN_DTYPES:
        raise DataError(f"token_dtype {name!r} is not supported; use one of {', '.join(TOKEN_DTYPES)}")
    return np.dtype(name)


def layout(path: Path, token_dtype: str) -> tuple[np.dtype, int, int]:
    """(dtype, header bytes, number of ids) of a token file, reading only its header."""
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"cannot read {path} as a .npy array ({e}); re-save it with np.save") from None
        if not isinstance(arr, np.memmap) or arr.dtype.kind not in "iu":
            raise DataError(f"{path} holds {arr.dtype} values; token ids must be an integer .npy array")
        if arr.ndim != 1 and not arr.flags.c_contiguous:
            raise DataError(f"{path} is a Fortran-ordered {arr.ndim}-D array; save a 1-D array of token ids")
        return arr.dtype, int(arr.offset), int(arr.size)
    dtype = parse_dtype(token_dtype)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(
            f"{path} has {size} bytes, not a multiple of {dtype.itemsize} ({dtype}); check token_dtype"
        )
    return dtype, 0, size // dtype.itemsize


def _map_whole(path: Path, token_dtype: str) -> np.ndarray:
    dtype, header, n = layout(path, token_dtype)
    return mmap(path, dtype, header, n)


def file_corpus(path: Path, token_dtype: str, fractions, vocab_size: int | None) -> Corpus:
    """One token file split into contiguous train/valid/test spans."""
    dtype, header, n = layout(path, token_dtype)
    if n == 0:
        raise DataError(f"token file {path} is empty; give a file with token ids in it")
    splits = contiguous_splits(path, dtype, header, n, fraction_sizes(n, fractions))
    return Corpus(
        *splits, vocab_size=check_ids(splits, vocab_size, str(path)), name=path.stem, kind="tokens", source=str(path)
    )


def find_splits(root: Path) -> dict[str, Path] | None:
    """Split files of a token directory, or None if it has no train.bin/.npy."""
    found = {}
    for split, stems in SPLIT_STEMS.items():
        for stem in stems:
            for suffix in (".bin", ".npy"):
                if (root / f"{stem}{suffix}").is_file():
                    found.setdefault(split, root / f"{stem}{suffix}")
    return found if "train" in found else None


def dir_corpus(root: Path, files: dict[str, Path], token_dtype: str, vocab_size: int | None) -> Corpus:
    """train/val/test files as the splits; a missing val or test split is empty."""
    arrays = {s: _map_whole(p, token_dtype) for s, p in files.items()}
    if len(arrays["train"]) == 0:
        raise DataError(f"token file {files['train']} is empty; give a train split with token ids in it")
    dtype = arrays["train"].dtype
    for split in ("valid", "test"):
        arrays.setdefault(split, np.zeros(0, dtype))
    return Corpus(
        arrays["train"],
        arrays["valid"],
        arrays["test"],
        vocab_size=check_ids(list(arrays.values()), vocab_size, str(root)),
        name=root.name,
        kind="tokens",
        source=str(root),
    )
