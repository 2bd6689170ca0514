"""Inputs for the `deqdist prepare` tests, made here from the built-in corpus (this Python's stdlib source).

A few hundred KB only: a fixed list of stdlib modules, written as a directory of
text files, as .jsonl, .jsonl.gz and .parquet. Prepared directories that several
tests read are session fixtures; tests that change one work on a copy.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deqdist.data.builtin import stdlib_root
from deqdist.prepare.command import Options, prepare

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["abc.py", "argparse.py", "base64.py", "bisect.py", "calendar.py", "csv.py", "dataclasses.py",
           "fnmatch.py", "heapq.py", "keyword.py", "operator.py", "shlex.py", "string.py", "textwrap.py"]
FRACTIONS = (0.6, 0.2, 0.2)
SHARD = 20_000  # ids per shard: several shards per split


def texts() -> dict[str, str]:
    root = stdlib_root()
    return {m: (root / m).read_text(encoding="utf-8") for m in MODULES}


def write_inputs(d: Path) -> dict[str, Path]:
    docs = texts()
    (d / "tree").mkdir()
    for name, t in docs.items():
        (d / "tree" / (name + ".txt")).write_text(t, encoding="utf-8")
    lines = "".join(json.dumps({"text": t, "name": n}) + "\n" for n, t in docs.items())
    (d / "docs.jsonl").write_text(lines, encoding="utf-8")
    (d / "docs.jsonl.gz").write_bytes(gzip.compress(lines.encode("utf-8"), mtime=0))
    out = {"tree": d / "tree", "jsonl": d / "docs.jsonl", "jsonl_gz": d / "docs.jsonl.gz"}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": list(docs.values()), "name": list(docs)}), d / "docs.parquet")
        out["parquet"] = d / "docs.parquet"
    except ImportError:
        pass
    return out


def run_prepare(inputs, out: Path, **kw) -> dict:
    kw.setdefault("fractions", FRACTIONS)
    kw.setdefault("shard_tokens", SHARD)
    kw.setdefault("workers", 1)
    return prepare(Options([str(i) for i in inputs], Path(out), progress=False, **kw))


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "deqdist.cli", *map(str, args)], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


def shard_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.bin"))}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="session")
def bytes_dir(tmp_path_factory, inputs) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "bytes"
    run_prepare([inputs["jsonl"]], out)
    return out


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory, inputs) -> Path:
    pytest.importorskip("tokenizers")
    out = tmp_path_factory.mktemp("prepared") / "bpe"
    run_prepare([inputs["jsonl"]], out, vocab_size=600, workers=2)
    return out
