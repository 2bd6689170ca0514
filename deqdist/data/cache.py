"""Concatenate many files into one cached file, one contiguous span per split.

Directory corpora (and the built-in one) are many small files; mapping one
file per split keeps the pipeline a plain memmap slice and gives a content
hash for free. Files are written atomically so concurrent processes on one
host (or a crash mid-write) never leave a half-written cache behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

_CHUNK = 1 << 22


def default_cache_dir() -> Path:
    env = os.environ.get("DEQDIST_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "deqdist"


def listing_key(root: Path, rels: Sequence[str], extra: object = None) -> str:
    """Cheap identity of a file tree (names, sizes, mtimes): no content read."""
    h = hashlib.sha256(json.dumps([str(root), repr(extra)]).encode())
    for rel in rels:
        st = (root / rel).stat()
        h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; a shared cache should be readable by all.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def concat_cached(cache_file: Path, root: Path, split_files: Sequence[Sequence[str]]) -> dict:
    """Return {"sizes", "sha256", "num_files"} for `cache_file`, building it if needed.

    The layout is the train files, then valid, then test, each group in the
    given order; `sha256` hashes exactly those bytes.
    """
    meta_file = cache_file.with_name(cache_file.name + ".json")
    if meta_file.exists() and cache_file.exists():
        meta = json.loads(meta_file.read_text())
        if cache_file.stat().st_size == sum(meta["sizes"]):
            return meta
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    sizes, digest = [], hashlib.sha256()

    def write(out):
        for files in split_files:
            total = 0
            for rel in files:
                with open(root / rel, "rb") as f:
                    while block := f.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        total += len(block)
            sizes.append(total)

    _atomic_write(cache_file, write)
    meta = {
        "sizes": sizes,
        "sha256": digest.hexdigest(),
        "num_files": [len(f) for f in split_files],
        "root": str(root),
    }
    _atomic_write(meta_file, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return meta
