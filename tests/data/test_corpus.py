"""Corpus loading: built-in stdlib corpus, text files/dirs, enwik8, token files."""
import hashlib
import os
import pickle

import numpy as np
import pytest

from deqdist.data.builtin import SKIP_DIRS, stdlib_root
from deqdist.data.corpus import decode
from deqdist.data.sources import load_corpus
from deqdist.data.text import list_files, split_by_path
from deqdist.data.windows import WindowReader


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    return load_corpus("builtin", cache_dir=tmp_path_factory.mktemp("cache"))


def test_builtin_is_deterministic_and_cached(builtin, tmp_path):
    again = load_corpus("", cache_dir=os.path.dirname(builtin.source))
    fresh = load_corpus("builtin", cache_dir=tmp_path)  # rebuilt from scratch
    assert builtin.sha256 == again.sha256 == fresh.sha256
    assert len(builtin.sha256) == 64
    assert builtin.sizes() == fresh.sizes()
    assert builtin.vocab_size == 256 and builtin.kind == "bytes" and builtin.train.dtype == np.uint8
    assert isinstance(builtin.train, np.memmap)
    # The hash is of exactly the three splits' bytes, in order.
    h = hashlib.sha256()
    for s in (builtin.train, builtin.valid, builtin.test):
        h.update(np.asarray(s).tobytes())
    assert h.hexdigest() == builtin.sha256
    info = builtin.info()
    assert info["sha256"] == builtin.sha256 and info["sizes"]["train"] == len(builtin.train)


def test_builtin_splits_are_nonempty_and_disjoint_by_file(builtin):
    root = stdlib_root()
    rels = [r for r in list_files(root, SKIP_DIRS) if r.endswith(".py")]
    groups = split_by_path(rels, (0.9, 0.05, 0.05))
    assert all(groups) and sum(map(len, groups)) == len(rels)
    assert not (set(groups[0]) & set(groups[1]) or set(groups[0]) & set(groups[2]) or set(groups[1]) & set(groups[2]))
    assert not any("site-packages" in r for r in rels)
    # Each split is exactly its files, concatenated in sorted order.
    for split, files in zip((builtin.train, builtin.valid, builtin.test), groups):
        assert len(split) > 0
        assert np.asarray(split).tobytes() == b"".join((root / f).read_bytes() for f in files)
    assert len(builtin.train) > 10 * len(builtin.valid)


def test_decode_bytes(builtin):
    text = builtin.decode(builtin.train[:2000])
    assert isinstance(text, str) and len(text) > 100
    assert decode(np.frombuffer("héllo".encode(), np.uint8)) == "héllo"
    # Out-of-range ids and broken UTF-8 are replaced, never raised.
    assert decode([104, 300, 0xC3]) == "h\ufffd\ufffd"


def test_text_file_contiguous_fractions(tmp_path):
    data = bytes(range(256)) * 40  # 10240 bytes
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    c = load_corpus(str(path))
    assert c.sizes() == {"train": 9216, "valid": 512, "test": 512}
    assert np.asarray(c.train).tobytes() + np.asarray(c.valid).tobytes() + np.asarray(c.test).tobytes() == data
    assert c.sha256 is None and c.name == "corpus.txt"
    c2 = load_corpus(str(path), split_fractions=[0.5, 0.25, 0.25])
    assert c2.sizes() == {"train": 5120, "valid": 2560, "test": 2560}


def test_enwik8_standard_split(tmp_path):
    path = tmp_path / "enwik8"
    with open(path, "wb") as f:
        f.truncate(100_000_000)  # sparse: costs no disk
    c = load_corpus(str(path))
    assert c.name == "enwik8"
    assert c.sizes() == {"train": 90_000_000, "valid": 5_000_000, "test": 5_000_000}
    # Same name, other size: an ordinary text file.
    other = tmp_path / "x" / "enwik8"
    other.parent.mkdir()
    other.write_bytes(b"a" * 1000)
    assert load_corpus(str(other)).sizes() == {"train": 900, "valid": 50, "test": 50}


def test_text_directory_split_by_path_and_cached(tmp_path):
    root = tmp_path / "texts"
    for i in range(40):
        d = root / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:02d}.txt").write_text(f"file {i}\n" * (i + 1))
    (root / ".hidden").write_text("skip me")
    cache = tmp_path / "cache"
    c = load_corpus(str(root), cache_dir=cache)
    rels = list_files(root)
    assert len(rels) == 40
    groups = split_by_path(rels, (0.9, 0.05, 0.05))
    for split, files in zip((c.train, c.valid, c.test), groups):
        assert np.asarray(split).tobytes() == b"".join((root / f).read_bytes() for f in files)
    # A file's split depends only on its own path.
    for k, files in enumerate(groups):
        for f in files:
            assert split_by_path([f], (0.9, 0.05, 0.05))[k] == [f]
    assert c.sha256 and load_corpus(str(root), cache_dir=cache).sha256 == c.sha256
    assert len(list(cache.glob("*.bytes"))) == 1
    # Editing a file invalidates the cache (new key from size/mtime).
    (root / "d0" / "f00.txt").write_text("changed\n" * 50)
    changed = load_corpus(str(root), cache_dir=cache)
    assert changed.sha256 != c.sha256 and len(list(cache.glob("*.bytes"))) == 2


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_token_bin_file(tmp_path, dtype):
    ids = (np.arange(5000) * 7919 % 50257).astype(dtype)
    path = tmp_path / "tokens.bin"
    ids.tofile(path)
    c = load_corpus(str(path), token_dtype=dtype, vocab_size=50257)
    assert c.kind == "tokens" and c.vocab_size == 50257 and c.train.dtype == np.dtype(dtype)
    assert c.sizes() == {"train": 4500, "valid": 250, "test": 250}
    np.testing.assert_array_equal(np.concatenate([c.train, c.valid, c.test]), ids)
    assert load_corpus(str(path), token_dtype=dtype).vocab_size == int(ids.max()) + 1


def test_token_npy_file(tmp_path):
    ids = np.arange(1000, dtype=np.uint32) % 300
    path = tmp_path / "tokens.npy"
    np.save(path, ids)
    c = load_corpus(str(path))
    assert c.vocab_size == 300 and c.train.dtype == np.uint32
    np.testing.assert_array_equal(np.concatenate([c.train, c.valid, c.test]), ids)
    # Splits are their own maps, so pickling re-opens the file instead of copying.
    assert len(pickle.dumps(WindowReader(c.train, 8))) < 500


def test_token_directory_nanogpt_layout(tmp_path):
    (np.arange(3000, dtype=np.uint16) % 1000).tofile(tmp_path / "train.bin")
    (np.arange(200, dtype=np.uint16) + 500).tofile(tmp_path / "val.bin")
    c = load_corpus(str(tmp_path), vocab_size=1024)
    assert c.sizes() == {"train": 3000, "valid": 200, "test": 0}
    assert c.valid[0] == 500 and c.vocab_size == 1024
    np.save(tmp_path / "test.npy", np.arange(100, dtype=np.int32))
    assert load_corpus(str(tmp_path), vocab_size=1024).sizes()["test"] == 100
