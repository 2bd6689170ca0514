"""A `deqdist prepare` directory as a Corpus: each split is its shards, memory-mapped, end to end.

A split's windows cross shard boundaries (the shards are one stream cut only
for writing), so nothing is lost at a shard's end. Each host maps every shard
but reads only the pages of its own windows.

At start every shard is checked against the manifest: its size, and its
sha256 (a full read of the corpus: hashlib ran at about 220 MB/s on the shared
2-core development machine; README: "Bring your own corpus"), and the
corpus's largest id against the model's vocabulary. The Corpus's `sha256` is
the manifest's fingerprint, so a resumed run refuses a corpus whose window
order differs from the one it was trained on (deqdist.store.rundir.check_corpus).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deqdist.data.corpus import Corpus
from deqdist.data.errors import DataError
from deqdist.prepare import manifest
from deqdist.prepare.errors import PrepareError
from deqdist.prepare.tokenizer import from_saved

SPLITS = manifest.SPLITS


def is_prepared(path: Path) -> bool:
    return (path / manifest.MANIFEST).is_file()


class ShardedTokens:
    """Read-only 1-D view of several token files back to back (len, slicing, windows); pickles as paths."""

    def __init__(self, paths: list[str], dtype, lengths: list[int]):
        self.paths, self.dtype, self.lengths = list(paths), np.dtype(dtype), [int(n) for n in lengths]
        self.bounds = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).astype(np.int64)
        self._maps = None

    def _arrays(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.memmap(p, dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, self.dtype)
                          for p, n in zip(self.paths, self.lengths)]
        return self._maps

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Ids [start, stop) as one array (a copy), across shards."""
        start, stop = max(0, start), min(stop, len(self))
        out, arrays = [], self._arrays()
        k = int(np.searchsorted(self.bounds, start, side="right")) - 1
        while start < stop:
            lo = start - int(self.bounds[k])
            take = min(stop - start, self.lengths[k] - lo)
            out.append(np.asarray(arrays[k][lo:lo + take]))
            start += take
            k += 1
        return np.concatenate(out) if out else np.zeros(0, self.dtype)

    def __getitem__(self, item):
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            return self.read(start, stop)[::step] if step != 1 else self.read(start, stop)
        i = int(item) + (len(self) if int(item) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(item)
        return self.read(i, i + 1)[0]

    def __array__(self, dtype=None, copy=None):
        a = self.read(0, len(self))
        return a.astype(dtype) if dtype is not None else a

    def windows(self, starts, width: int) -> np.ndarray:
        """(len(starts), width) array of the ids at each start."""
        return np.stack([self.read(int(s), int(s) + width) for s in np.asarray(starts).ravel()])

    def __getstate__(self):
        return {"paths": self.paths, "dtype": self.dtype.str, "lengths": self.lengths}

    def __setstate__(self, state):
        self.__init__(state["paths"], state["dtype"], state["lengths"])


def _check(root: Path, m: dict, vocab_size: int | None) -> None:
    try:
        bad = manifest.problems(root, m, hash=True)
    except OSError as e:
        raise DataError(f"cannot read the prepared corpus {root} ({e})") from None
    if bad:
        raise DataError(f"prepared corpus {root}: {bad[0]}; check it with `deqdist prepare --verify {root}` and "
                        f"re-run the prepare command to rewrite damaged shards")
    max_id = m["totals"]["max_id"]
    if vocab_size is not None and max_id >= vocab_size:
        raise DataError(f"prepared corpus {root} holds token id {max_id} >= model.vocab_size {vocab_size} (its "
                        f"tokenizer has {m['tokenizer']['vocab_size']} ids); set model.vocab_size="
                        f"{m['tokenizer']['vocab_size']}")


def load_codec(root: Path, m: dict):
    """The tokenizer that made the corpus (byte-level needs no dependency)."""
    t = m["tokenizer"]
    text = (root / t["file"]).read_text(encoding="utf-8") if t.get("file") else None
    try:
        return from_saved(t["kind"], text, t.get("bos"))
    except PrepareError as e:
        raise DataError(f"prepared corpus {root}: {e}") from None


def corpus_codec(spec: str):
    """The tokenizer of a prepared corpus (without reading its shards), or None for any other corpus."""
    path = Path(str(spec)).expanduser()
    if not path.is_dir() or not is_prepared(path):
        return None
    try:
        return load_codec(path, manifest.load(path))
    except PrepareError as e:
        raise DataError(str(e)) from None


def prepared_corpus(root: Path, vocab_size: int | None) -> Corpus:
    try:
        m = manifest.load(root)
    except PrepareError as e:
        raise DataError(str(e)) from None
    _check(root, m, vocab_size)
    dtype = np.dtype(m["dtype"])
    arrays = {}
    for s in SPLITS:
        recs = m["splits"][s]["shards"]
        arrays[s] = ShardedTokens([str(root / r["file"]) for r in recs], dtype, [r["tokens"] for r in recs])
    if len(arrays["train"]) == 0:
        raise DataError(f"prepared corpus {root} has an empty train split; prepare it with more text")
    t = m["tokenizer"]
    return Corpus(
        arrays["train"], arrays["valid"], arrays["test"],
        vocab_size=int(vocab_size if vocab_size is not None else t["vocab_size"]),
        name=root.name, sha256=m["fingerprint"], kind="bytes" if t["kind"] == "bytes" else "tokens",
        source=str(root), codec=load_codec(root, m),
        bytes_per_token={s: m["splits"][s].get("bytes_per_token") for s in SPLITS},
        tokenizer={"kind": t["kind"], "sha256": t["sha256"], "vocab_size": t["vocab_size"], "bos_id": t["bos_id"]},
    )
