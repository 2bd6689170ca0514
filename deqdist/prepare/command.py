"""`deqdist prepare INPUT... --out DIR` and `deqdist prepare --verify DIR`.

Everything that can be checked before writing is (inputs exist and are hashed,
plain text is UTF-8, the tokenizer loads or trains, DIR is new, empty or an
earlier prepare of the same inputs and settings); then the tokenizer, the
shards and, last, manifest.json are written. Running the same command again
after a crash (or after --verify found damage) keeps every shard that verifies.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from deqdist.store.atomic import TMP_PREFIX, write_atomic
from deqdist.prepare import inputs, manifest, shards, tokenizer
from deqdist.prepare.errors import PrepareError

DEFAULT_FRACTIONS = (0.98, 0.01, 0.01)
DEFAULT_SHARD_TOKENS = 1 << 26  # 128 MiB of uint16
DEFAULT_SAMPLE_BYTES = 256 << 20
PIECE_CHARS = 1 << 16


@dataclasses.dataclass
class Options:
    inputs: Sequence[str]
    out: Path
    vocab_size: int | None = None
    tokenizer_file: str | None = None
    bos: str | None = ""  # "" = <|endoftext|> if a given tokenizer has it
    field: str = "text"
    workers: int = 1
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    sample_bytes: int = DEFAULT_SAMPLE_BYTES
    progress: bool = True
    command: dict = dataclasses.field(default_factory=dict)


def run_prepare(args) -> int:
    """The command on parsed arguments (see deqdist.cli): checks what argparse cannot, then runs."""
    if args.verify is not None:
        if args.inputs or args.out:
            raise PrepareError("--verify DIR takes no INPUT or --out")
        return verify_command(Path(args.verify))
    if not args.inputs or not args.out:
        raise PrepareError("give INPUT... and --out DIR (or --verify DIR); see `deqdist prepare --help`")
    for k in ("workers", "shard_tokens", "sample_bytes", "vocab_size", "seed"):
        v = getattr(args, k)
        if v is not None and not (0 if k in ("workers", "seed") else 1) <= v < 2**62:
            raise PrepareError(f"--{k.replace('_', '-')} must be an integer >= {0 if k in ('workers', 'seed') else 1}"
                               f", got {v}")
    if (args.bos is not None or args.no_bos) and not args.tokenizer:
        raise PrepareError("--bos/--no-bos go with --tokenizer FILE (a trained BPE always uses <|endoftext|>)")
    try:
        fractions = tuple(float(x) for x in args.split_fractions.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise PrepareError(f"--split-fractions must be three numbers >= 0 (train > 0) that sum to 1, got "
                           f"{args.split_fractions!r}")
    command = {k: v for k, v in vars(args).items() if k != "run"}
    opts = Options(args.inputs, Path(args.out), vocab_size=args.vocab_size, tokenizer_file=args.tokenizer,
                   bos=None if args.no_bos else (args.bos or ""), field=args.field, workers=args.workers,
                   seed=args.seed, fractions=fractions, shard_tokens=args.shard_tokens,
                   sample_bytes=args.sample_bytes, progress=not args.quiet, command=command)
    prepare(opts)
    return 0


def verify_command(root: Path) -> int:
    m = manifest.verify(Path(root))
    t = m["totals"]
    n = sum(len(m["splits"][s]["shards"]) for s in manifest.SPLITS)
    print(f"{root}: ok, {n} shards, {t['tokens']:,} tokens of {t['bytes']:,} bytes ({t['bytes_per_token']:.3f} "
          f"bytes/token), tokenizer {m['tokenizer']['kind']} sha256 {m['tokenizer']['sha256'][:12]}, fingerprint "
          f"{m['fingerprint'][:16]}")
    return 0


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        names = {p.name for p in out.iterdir() if not p.name.startswith(TMP_PREFIX)}
        if names and not names & {shards.PROGRESS, manifest.MANIFEST}:
            raise PrepareError(f"--out {out} is not empty and holds no earlier `deqdist prepare`; give a new or "
                               f"empty directory")


def settings(opts: Options, sources, digests) -> dict:
    tok = {"kind": "bytes"}
    if opts.tokenizer_file:
        tok = {"kind": "given", "sha256": hashlib.sha256(Path(opts.tokenizer_file).read_bytes()).hexdigest(),
               "bos": opts.bos}
    elif opts.vocab_size:
        tok = {"kind": "trained", "vocab_size": opts.vocab_size, "sample_bytes": opts.sample_bytes}
    return {
        "inputs": [[str(s.path), size, digest, s.split] for s, (size, digest) in zip(sources, digests)],
        "field": opts.field, "tokenizer": tok, "seed": opts.seed, "fractions": list(opts.fractions),
        "shard_tokens": opts.shard_tokens, "piece_chars": PIECE_CHARS, "version": manifest.VERSION,
    }


def make_codec(opts: Options, sources, key: str):
    if opts.tokenizer_file:
        return tokenizer.load_file(opts.tokenizer_file, opts.bos)
    if not opts.vocab_size:
        return tokenizer.ByteCodec()
    saved = opts.out / manifest.TOKENIZER
    if saved.is_file() and _same_key(opts.out, key):
        return tokenizer.BPECodec(saved.read_text(encoding="utf-8"), tokenizer.ENDOFTEXT)
    _say(opts, f"training a {opts.vocab_size:,}-token byte-level BPE on a sample of at most "
               f"{opts.sample_bytes:,} bytes of the train split")
    text = shards.sample(sources, opts.field, opts.seed, opts.fractions, PIECE_CHARS, opts.sample_bytes)
    return tokenizer.train_bpe(text, opts.vocab_size)


def _same_key(out: Path, key: str) -> bool:
    for name in (shards.PROGRESS, manifest.MANIFEST):
        try:
            if json.loads((out / name).read_bytes()).get("settings_key") == key:
                return True
        except (OSError, ValueError, AttributeError):
            pass
    return False


def _say(opts: Options, msg: str) -> None:
    if opts.progress:
        print(msg, file=sys.stderr, flush=True)


def _check_inputs(opts: Options) -> tuple[list, list, dict, str]:
    """(sources, their (size, sha256), the settings, their key); PrepareError before anything is written."""
    check_out(opts.out)
    sources = inputs.expand(list(opts.inputs))
    digests = [inputs.file_digest(s) for s in sources]
    for s in sources:
        inputs.check_field(s, opts.field)
    setting = settings(opts, sources, digests)
    key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()
    earlier = [n for n in (shards.PROGRESS, manifest.MANIFEST) if (opts.out / n).is_file()]
    if earlier and not _same_key(opts.out, key):
        raise PrepareError(f"--out {opts.out} holds a `deqdist prepare` of other inputs or settings; give a new "
                           f"--out, or delete {opts.out} to replace it")
    return sources, digests, setting, key


def prepare(opts: Options) -> dict:
    """Prepare opts.inputs into opts.out; returns the manifest."""
    sources, digests, setting, key = _check_inputs(opts)
    codec = make_codec(opts, sources, key)
    dtype = tokenizer.dtype_for(codec.vocab_size)
    opts.out.mkdir(parents=True, exist_ok=True)
    for p in opts.out.glob(TMP_PREFIX + "*"):
        p.unlink()  # half-written files of a killed run
    if codec.to_json() is not None:
        write_atomic(opts.out / manifest.TOKENIZER, codec.to_json())
    done = shards.resumable(opts.out, key, dtype.itemsize)
    kept = sum(len(v) for v in done.values())
    if kept:
        _say(opts, f"resuming: {kept} shard(s) of an earlier run verify and are kept")
    head = _head(opts, setting, key, codec, dtype, sources, digests)
    writers = {}

    def on_shard():
        head["splits"] = {s: {"shards": w.records} for s, w in writers.items()}
        write_atomic(opts.out / shards.PROGRESS, json.dumps(head) + "\n")

    for s in manifest.SPLITS:
        writers[s] = shards.SplitWriter(opts.out, s, dtype, opts.shard_tokens, done[s], on_shard)
    items = shards.stream(sources, opts.field, opts.seed, opts.fractions, PIECE_CHARS)
    t0 = time.time()
    with _progress(opts, sum(d[0] for d in digests)) as bar:
        counts = shards.write_shards(opts.out, items, codec, writers, opts.workers, bar)
        for w in writers.values():
            w.finish()
    m = _finish(head, writers, counts)
    manifest.write(opts.out, m)
    (opts.out / shards.PROGRESS).unlink(missing_ok=True)
    t = m["totals"]
    _say(opts, f"prepared {opts.out}: {t['tokens']:,} tokens from {t['bytes']:,} bytes in {t['documents']:,} "
               f"documents ({t['bytes_per_token']:.3f} bytes/token) in {time.time() - t0:.1f}s; fingerprint "
               f"{m['fingerprint'][:16]}")
    return m


def _head(opts, setting, key, codec, dtype, sources, digests) -> dict:
    return {
        "format": manifest.FORMAT, "version": manifest.VERSION,
        "command": {"prog": "deqdist prepare", **dict(opts.command)},
        "tokenizer": {
            "kind": codec.kind, "sha256": codec.sha256, "vocab_size": codec.vocab_size, "bos": codec.bos,
            "bos_id": codec.bos_id, "eos_id": None,
            "file": manifest.TOKENIZER if codec.to_json() is not None else None,
            "policy": "bytes: no special ids" if codec.kind == "bytes" else "bos before every document, no eos",
        },
        "dtype": dtype.name,
        "inputs": [{"path": str(s.path), "format": s.format, "compression": s.compression, "split": s.split,
                    "size": size, "sha256": digest} for s, (size, digest) in zip(sources, digests)],
        "split_policy": {"method": "pinned SPLIT=INPUT, else blake2b(document text, key=seed) < fractions",
                         "seed": opts.seed, "fractions": list(opts.fractions)},
        "shard_tokens": opts.shard_tokens,
        "windows": "a split is its shards concatenated in order; windows cross shard boundaries",
        "settings": setting, "settings_key": key,
    }


def _finish(head: dict, writers, counts) -> dict:
    m = dict(head)
    m["splits"], tot = {}, {"bytes": 0, "tokens": 0, "documents": 0, "max_id": -1}
    for s, w in writers.items():
        tokens = sum(r["tokens"] for r in w.records)
        c = counts[s]
        m["splits"][s] = {"shards": w.records, "tokens": tokens, "documents": c["documents"], "bytes": c["bytes"],
                          "bytes_per_token": c["bytes"] / tokens if tokens else None}
        tot["bytes"] += c["bytes"]
        tot["tokens"] += tokens
        tot["documents"] += c["documents"]
        tot["max_id"] = max([tot["max_id"]] + [r["max_id"] for r in w.records])
    if tot["tokens"] == 0:
        raise PrepareError("the inputs hold no text (every document is empty)")
    tot["bytes_per_token"] = tot["bytes"] / tot["tokens"]
    m["totals"] = tot
    m["fingerprint"] = manifest.fingerprint(m)
    return m


class _NoBar:
    def update(self, n):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(opts: Options, total: int):
    if not opts.progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizing", file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
