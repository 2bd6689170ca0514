"""The built-in default corpus: this Python's standard library source code.

It is on every machine, needs no download, is a few MB of real structured
text, and is fixed for a given Python build, so runs are reproducible offline.
Its content hash names exactly which bytes were trained on.
"""
from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from deqdist.data.corpus import DEFAULT_FRACTIONS, Corpus
from deqdist.data.errors import DataError
from deqdist.data.text import files_corpus, list_files

# Third-party code and the test suites (huge, repetitive, odd encodings) are
# not "the standard library" and vary more between installs.
SKIP_DIRS = ("site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def builtin_corpus(cache_dir=None, vocab_size: int | None = None, root: Path | None = None) -> Corpus:
    """The stdlib's .py files in sorted relative-path order, split by path hash."""
    root = Path(root).resolve() if root else stdlib_root()
    if not root.is_dir():
        raise DataError(f"the standard library directory {root} is missing; pass a corpus path instead of 'builtin'")
    rels = [r for r in list_files(root, SKIP_DIRS) if r.endswith(".py")]
    if not rels:
        raise DataError(f"no .py files under the standard library directory {root}; pass a corpus path instead")
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    return files_corpus(
        root,
        rels,
        name=f"builtin-stdlib-{version}",
        prefix=f"builtin-{version}",
        fractions=DEFAULT_FRACTIONS,
        vocab_size=vocab_size,
        cache_dir=cache_dir,
        extra="stdlib-py",
    )
