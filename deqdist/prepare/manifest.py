"""manifest.json of a prepared directory: its schema, fingerprint and verification.

    DIR/manifest.json                what follows, written last (atomically)
    DIR/tokenizer.json               the BPE tokenizer (absent for byte-level)
    DIR/<split>-<k:05d>.bin          shard k of a split: `shard_tokens` raw ids (the last one fewer)
    DIR/<split>-<k:05d>.docs.bin     uint64 offsets (within that shard) of the documents starting in it

A split's token stream is the concatenation of its shards in order; training
windows cross shard boundaries (nothing is dropped at a shard's end).

The fingerprint hashes everything that fixes the window order: the format
version, the tokenizer's hash, the dtype and every split's shards in order
(tokens and sha256). The same text prepared with the same tokenizer and
settings has the same fingerprint whatever the number of workers.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deqdist.store.atomic import write_atomic
from deqdist.prepare.errors import PrepareError

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
FORMAT = "deqdist-prepared"
VERSION = 1
SPLITS = ("train", "valid", "test")
_BLOCK = 1 << 22


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.bin"


def docs_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.docs.bin"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def fingerprint(m: dict) -> str:
    what = {
        "format": [FORMAT, VERSION],
        "tokenizer": m["tokenizer"]["sha256"],
        "dtype": m["dtype"],
        "splits": {s: [[r["tokens"], r["sha256"]] for r in m["splits"][s]["shards"]] for s in SPLITS},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def write(root: Path, m: dict) -> None:
    write_atomic(root / MANIFEST, json.dumps(m, indent=1) + "\n")


def load(root: Path) -> dict:
    """The manifest of a prepared directory, checked for shape (PrepareError if it is not one)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise PrepareError(f"{root} has no {MANIFEST}; prepare it with `deqdist prepare INPUT... --out {root}`")
    try:
        m = json.loads(path.read_bytes())
        ok = m.get("format") == FORMAT and isinstance(m.get("splits"), dict)
        ok = ok and all(isinstance(m["splits"][s]["shards"], list) for s in SPLITS)
        ok = ok and isinstance(m["tokenizer"]["sha256"], str) and isinstance(m["totals"]["max_id"], int)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise PrepareError(f"{path} is damaged or not a deqdist manifest; re-run `deqdist prepare` into {root}")
    if m.get("version") != VERSION:
        raise PrepareError(f"{path} has format version {m.get('version')}, this deqdist reads {VERSION}; "
                           f"prepare the corpus again")
    return m


def check_shard(root: Path, rec: dict, itemsize: int, *, hash: bool = True) -> str | None:
    """Why a shard (and its document offsets) does not match its record, or None."""
    for name, size, digest in ((rec["file"], rec["tokens"] * itemsize, rec["sha256"]),
                               (rec["docs_file"], rec["documents"] * 8, rec["docs_sha256"])):
        path = root / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, the manifest says {size}"
        if hash and sha256_file(path) != digest:
            return f"{path} does not match its sha256 in the manifest (damaged or changed)"
    return None


def problems(root: Path, m: dict, *, hash: bool = True) -> list[str]:
    """Everything in a prepared directory that does not match its manifest (empty: it is whole)."""
    import numpy as np

    root = Path(root)
    out = []
    if m["tokenizer"].get("file"):
        tok = root / m["tokenizer"]["file"]
        if not tok.is_file() or hashlib.sha256(tok.read_bytes()).hexdigest() != m["tokenizer"]["sha256"]:
            out.append(f"{tok} is missing or does not match the tokenizer hash in the manifest")
    itemsize = np.dtype(m["dtype"]).itemsize
    for s in SPLITS:
        for rec in m["splits"][s]["shards"]:
            why = check_shard(root, rec, itemsize, hash=hash)
            if why:
                out.append(why)
    if fingerprint(m) != m.get("fingerprint"):
        out.append(f"{root / MANIFEST}: its fingerprint does not match its contents (edited by hand?)")
    return out


def verify(root: Path, *, hash: bool = True) -> dict:
    """The manifest if the directory is whole; PrepareError naming the first problem otherwise."""
    m = load(root)
    bad = problems(root, m, hash=hash)
    if bad:
        more = f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""
        raise PrepareError(f"{bad[0]}{more}; run the same `deqdist prepare` command again to rewrite what is "
                           f"damaged (it keeps the shards that verify)")
    return m
