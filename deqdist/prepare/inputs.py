"""Documents from the inputs of `deqdist prepare`, in a fixed order.

One document per text file or per record: a `.jsonl` line's `field`, a
`.parquet` row's `field`. `.gz`, `.bz2` and `.xz` are read through the standard
library's decompressors (`.jsonl.gz`, `.txt.xz`, ...). A directory stands for
its non-hidden files in sorted path order. An input may be pinned to a split
with a `SPLIT=` prefix (e.g. `valid=wiki.valid.raw`); other documents are split
by hash (see shards.py).

Text must be UTF-8: the first bad byte ends the command with one line that
names the file and the byte offset (of the decompressed stream for
compressed files).
"""
from __future__ import annotations

import bz2
import codecs
import dataclasses
import gzip
import hashlib
import json
import lzma
import os
from pathlib import Path
from typing import Iterator

from deqdist.prepare.errors import PrepareError, require

SPLITS = ("train", "valid", "test")
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_BLOCK = 1 << 22


@dataclasses.dataclass(frozen=True)
class Source:
    path: Path
    split: str | None = None  # pinned split, or None: by document hash

    @property
    def compression(self) -> str | None:
        return self.path.suffix.lower() if self.path.suffix.lower() in COMPRESSED else None

    @property
    def format(self) -> str:
        """'jsonl', 'parquet' or 'text' (from the name without its compression suffix)."""
        name = self.path.name.lower()
        if self.compression:
            name = name[: -len(self.compression)]
        if name.endswith((".jsonl", ".ndjson")):
            return "jsonl"
        if name.endswith(".parquet"):
            return "parquet"
        return "text"


def _walk(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / n for n in filenames if not n.startswith(".")]
    return sorted(p for p in out if p.is_file())


def expand(specs: list[str]) -> list[Source]:
    """INPUT arguments -> sources in order; a directory becomes its files."""
    out = []
    for spec in specs:
        split, raw = None, spec
        head, sep, tail = spec.partition("=")
        if sep and head in SPLITS and not Path(spec).exists():
            split, raw = head, tail
        path = Path(raw).expanduser()
        if not path.exists():
            raise PrepareError(f"input {raw!r} does not exist; give text files, directories, .jsonl or .parquet files")
        files = _walk(path) if path.is_dir() else [path]
        if not files:
            raise PrepareError(f"input directory {path} holds no (non-hidden) files")
        for f in files:
            src = Source(f.resolve(), split)
            if src.format == "parquet" and src.compression:
                raise PrepareError(f"{f}: a compressed .parquet file cannot be read; parquet compresses internally, "
                                   f"decompress the file")
            out.append(src)
    return out


def file_digest(src: Source) -> tuple[int, str]:
    """(size, sha256) of an input as it is on disk; uncompressed text is checked to be UTF-8 on the way,
    so a bad byte is reported before anything is written."""
    h, size = hashlib.sha256(), 0
    check = None if src.compression or src.format == "parquet" else codecs.getincrementaldecoder("utf-8")()
    try:
        with open(src.path, "rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
                if check is not None:
                    try:
                        check.decode(block)
                    except UnicodeDecodeError as e:
                        # e.object is the decoder's leftover bytes from the last block + this block.
                        _bad_utf8(src.path, size - (len(e.object) - len(block)) + e.start, e.reason, False)
                size += len(block)
        if check is not None:
            try:
                check.decode(b"", final=True)
            except UnicodeDecodeError as e:
                _bad_utf8(src.path, size - (len(e.object) - e.start), e.reason, False)
    except OSError as e:
        raise PrepareError(f"cannot read input {src.path}: {e.strerror or e}") from None
    return size, h.hexdigest()


def _bad_utf8(path: Path, offset: int, reason: str, compressed: bool):
    where = "of the decompressed data " if compressed else ""
    raise PrepareError(f"{path}: byte offset {offset} {where}is not valid UTF-8 ({reason}); convert the file to "
                       f"UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out")


def _utf8(raw: bytes, path: Path, base: int, compressed: bool) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _bad_utf8(path, base + e.start, e.reason, compressed)


def _read_bytes(src: Source) -> bytes:
    try:
        if src.compression:
            with COMPRESSED[src.compression](src.path, "rb") as f:
                return f.read()
        return src.path.read_bytes()
    except (OSError, EOFError, lzma.LZMAError) as e:
        what = f"a valid {src.compression} file" if src.compression else "readable"
        raise PrepareError(f"input {src.path} is not {what} ({e}); fix or leave out the file") from None


def _text_docs(src: Source) -> Iterator[tuple[str, int]]:
    raw = _read_bytes(src)
    if raw:
        yield _utf8(raw, src.path, 0, bool(src.compression)), len(raw)


def _jsonl_docs(src: Source, field: str, lines=None) -> Iterator[tuple[str, int]]:
    offset = 0
    lines = _read_bytes(src).splitlines(keepends=True) if lines is None else lines
    for lineno, line in enumerate(lines, 1):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        text = _utf8(line, src.path, start, bool(src.compression))
        try:
            rec = json.loads(text)
        except ValueError as e:
            raise PrepareError(f"{src.path}: line {lineno} (byte offset {start}) is not JSON ({e})") from None
        value = rec.get(field) if isinstance(rec, dict) else None
        if not isinstance(value, str):
            raise PrepareError(f"{src.path}: line {lineno} (byte offset {start}) has no text field {field!r}; "
                               f"name the field with --field")
        if value:
            yield value, len(value.encode("utf-8"))


def _parquet_docs(src: Source, field: str) -> Iterator[tuple[str, int]]:
    pq = require("pyarrow.parquet", f"reading {src.path}")
    try:
        f = pq.ParquetFile(src.path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError types
        raise PrepareError(f"input {src.path} is not a readable parquet file ({e})") from None
    if field not in f.schema_arrow.names:
        raise PrepareError(f"{src.path} has no column {field!r} (it has {', '.join(f.schema_arrow.names)}); "
                           f"name the text column with --field")
    row = 0
    for batch in f.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if isinstance(value, bytes):
                value = _utf8(value, src.path, 0, False) if _is_utf8(value) else _bad_row(src.path, row, field)
            if not isinstance(value, (str, type(None))):
                raise PrepareError(f"{src.path}: row {row} of column {field!r} is not text")
            if value:
                yield value, len(value.encode("utf-8"))
            row += 1


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _bad_row(path: Path, row: int, field: str):
    raise PrepareError(f"{path}: row {row} of binary column {field!r} is not valid UTF-8; convert it to UTF-8 text")


def check_field(src: Source, field: str) -> None:
    """PrepareError now if the first record of a .jsonl/.parquet input lacks `field` (before anything is written)."""
    if src.format == "jsonl":
        opener = COMPRESSED.get(src.compression or "", open)
        try:
            with opener(src.path, "rb") as f:
                first = next((line for line in f if line.strip()), b"")
        except (OSError, EOFError, lzma.LZMAError):
            return  # reported with its reason when the file is read
        next(_jsonl_docs(src, field, [first]), None)
    elif src.format == "parquet":
        next(_parquet_docs(src, field), None)


def documents(src: Source, field: str) -> Iterator[tuple[str, int]]:
    """(text, UTF-8 byte length) of each non-empty document of a source, in order."""
    if src.format == "jsonl":
        return _jsonl_docs(src, field)
    if src.format == "parquet":
        return _parquet_docs(src, field)
    return _text_docs(src)
