"""Documents -> token shards, in worker processes, resumable.

The main process reads documents in input order, assigns each to a split
(pinned, or by a seeded hash of its text: never "the last N%"), cuts long
documents into pieces, and hands batches of pieces to `workers` encoding
processes. Results are consumed in submission order, so the shards are the
same bytes for any number of workers. At most 2 batches per worker are in
flight, so memory does not grow with the corpus.

Pieces: a document longer than `piece_chars` is cut before a single space or
newline between two non-space characters, where GPT-2's byte-level pre-split
starts a new word anyway, so the pieces encode to the same ids as the whole
document (a stretch of `piece_chars` with no such place is cut hard). No encode call ever sees more than one
piece: nothing is quadratic in the document length.

Resume: every shard is written atomically and then recorded, with the position
in the piece stream where the next shard of its split starts, in
`.prepare-progress.json`. A new run with the same settings keeps the leading
shards that verify and does not encode the pieces they cover.
"""
from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import re
import signal
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from deqdist.store.atomic import TMP_PREFIX, write_atomic
from deqdist.prepare import inputs, manifest
from deqdist.prepare.tokenizer import from_saved

PROGRESS = ".prepare-progress.json"
KILL_ENV = "DEQDIST_PREPARE_KILL_AFTER_SHARDS"  # tests: SIGKILL this process halfway through shard N+1
BATCH_CHARS = 1 << 20
FINAL = [-1, 0]  # `end` of a split's last shard: nothing of it is left to encode


def split_of(text: str, seed: int, fractions: Sequence[float]) -> str:
    """train/valid/test by a seeded hash of the document's text (equal texts share a split)."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=seed.to_bytes(8, "little"))
    u = int.from_bytes(h.digest(), "little") / 2.0**64
    return "train" if u < fractions[0] else "valid" if u < fractions[0] + fractions[1] else "test"


_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


def pieces(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` characters, each cut just before a lone space or newline
    between two non-space characters: the pre-split starts a new word there anyway."""
    out, start = [], 0
    while len(text) - start > limit:
        cuts = [m.start() for m in _CUT.finditer(text, start + limit // 2, start + limit)]
        cut = cuts[-1] if cuts else start + limit
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def stream(sources: Sequence[inputs.Source], field: str, seed: int, fractions, limit: int) -> Iterator[tuple]:
    """(split, first piece of its document?, piece, UTF-8 bytes of the document or 0) in order."""
    for src in sources:
        for text, nbytes in inputs.documents(src, field):
            split = src.split or split_of(text, seed, fractions)
            for k, piece in enumerate(pieces(text, limit)):
                yield split, k == 0, piece, nbytes if k == 0 else 0


def sample(sources, field: str, seed: int, fractions, limit: int, cap: int) -> Iterator[str]:
    """Train pieces kept with a seeded probability cap/size of the inputs, until `cap` bytes are kept."""
    total = sum(s.path.stat().st_size for s in sources) or 1
    p, kept = min(1.0, cap / total), 0
    rng = np.random.default_rng([seed, 7])
    for split, _, piece, _ in stream(sources, field, seed, fractions, limit):
        if split != "train" or rng.random() >= p:
            continue
        n = len(piece.encode("utf-8"))
        if kept + n > cap:
            return
        kept += n
        yield piece


_CODEC = None


def _init_worker(kind: str, text: str | None, bos: str | None) -> None:
    global _CODEC
    # One encoding thread per worker: the pool is the parallelism, and it stays predictable.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _CODEC = from_saved(kind, text, bos)


def _encode(texts: list[str]) -> list[np.ndarray]:
    return _CODEC.encode_batch(texts)


class SplitWriter:
    """Cuts one split's id stream into shards of `shard_tokens` ids and writes them."""

    def __init__(self, root: Path, split: str, dtype, shard_tokens: int, done: list[dict], on_shard):
        self.root, self.split, self.dtype, self.size = root, split, np.dtype(dtype), shard_tokens
        self.records, self.on_shard = list(done), on_shard
        self.parts: list[np.ndarray] = []
        self.n, self.doc_starts = 0, []
        self.cursor = tuple(done[-1]["end"]) if done else (0, 0)
        if self.cursor == tuple(FINAL):
            self.cursor = (float("inf"), 0)

    def wants(self, index: int) -> bool:
        return index >= self.cursor[0]

    def add(self, index: int, ids: np.ndarray, doc_start: bool) -> None:
        if index == self.cursor[0]:
            ids, doc_start = ids[self.cursor[1]:], doc_start and self.cursor[1] == 0
        if doc_start:
            self.doc_starts.append(self.n)
        pos = 0
        while len(ids) - pos >= self.size - self.n:
            take = self.size - self.n
            self.parts.append(ids[pos:pos + take])
            pos += take
            self.n += take
            self.flush([index, pos] if pos < len(ids) else [index + 1, 0])
        if pos < len(ids):
            self.parts.append(ids[pos:])
            self.n += len(ids) - pos

    def flush(self, end: list[int]) -> None:
        k = len(self.records)
        data = np.concatenate(self.parts).astype(self.dtype) if self.parts else np.zeros(0, self.dtype)
        docs = np.asarray(self.doc_starts, dtype="<u8").tobytes()
        _maybe_die(self.root, data)
        write_atomic(self.root / manifest.docs_name(self.split, k), docs)
        write_atomic(self.root / manifest.shard_name(self.split, k), data.tobytes())
        self.records.append({
            "file": manifest.shard_name(self.split, k), "tokens": int(len(data)),
            "sha256": hashlib.sha256(data.tobytes()).hexdigest(), "documents": len(self.doc_starts),
            "docs_file": manifest.docs_name(self.split, k), "docs_sha256": hashlib.sha256(docs).hexdigest(),
            "max_id": int(data.max()) if len(data) else -1, "end": end,
        })
        self.parts, self.n, self.doc_starts = [], 0, []
        self.on_shard()

    def finish(self) -> None:
        if self.n:
            self.flush(list(FINAL))


_written = 0


def _maybe_die(root: Path, data: np.ndarray) -> None:
    """The test hook: after N shards, leave a half-written shard behind and die like `kill -9`."""
    global _written
    limit = os.environ.get(KILL_ENV)
    if limit is not None and _written == int(limit):
        with open(root / f"{TMP_PREFIX}killed-mid-shard", "wb") as f:
            f.write(data.tobytes()[: data.nbytes // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    _written += 1


def resumable(root: Path, key: str, itemsize: int) -> dict[str, list[dict]]:
    """Per split, the leading recorded shards of an earlier run with the same settings that verify."""
    done: dict[str, list[dict]] = {s: [] for s in manifest.SPLITS}
    for name in (PROGRESS, manifest.MANIFEST):
        try:
            state = json.loads((root / name).read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(state, dict) or state.get("settings_key") != key:
            continue
        for s in manifest.SPLITS:
            for rec in state.get("splits", {}).get(s, {}).get("shards", []):
                if manifest.check_shard(root, rec, itemsize):
                    break
                done[s].append(rec)
        return done
    return done


def write_shards(root: Path, items: Iterator[tuple], codec, writers: dict[str, SplitWriter], workers: int,
                 progress) -> dict[str, dict]:
    """Encode every piece some writer still wants and feed the writers in order; per-split byte/doc counts."""
    counts = {s: {"bytes": 0, "documents": 0} for s in manifest.SPLITS}
    pool = None
    if workers > 0:
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(workers, _init_worker, (codec.kind, codec.to_json(), codec.bos))
    inflight: collections.deque = collections.deque()

    def drain(n_left: int) -> None:
        while len(inflight) > n_left:
            meta, result = inflight.popleft()
            ids_list = result.get() if pool else result
            _deliver(meta, ids_list, codec, writers, progress)

    try:
        for meta, texts in _batches(items, writers, counts):
            inflight.append((meta, pool.apply_async(_encode, (texts,)) if pool else codec.encode_batch(texts)))
            drain(2 * max(workers, 1))
        drain(0)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return counts


def _batches(items, writers, counts) -> Iterator[tuple[list, list[str]]]:
    meta, texts, chars = [], [], 0
    for index, (split, first, piece, nbytes) in enumerate(items):
        counts[split]["bytes"] += nbytes
        counts[split]["documents"] += first
        wanted = writers[split].wants(index)
        meta.append((index, split, first, nbytes, wanted))
        if wanted:
            texts.append(piece)
            chars += len(piece)
        if chars >= BATCH_CHARS:
            yield meta, texts
            meta, texts, chars = [], [], 0
    if meta:
        yield meta, texts


def _deliver(meta, ids_list, codec, writers, progress) -> None:
    it = iter(ids_list)
    for index, split, first, nbytes, wanted in meta:
        if wanted:
            ids = next(it)
            if first and codec.bos_id is not None:
                ids = np.concatenate([np.asarray([codec.bos_id], ids.dtype), ids])
            writers[split].add(index, ids, first)
        progress.update(nbytes)
