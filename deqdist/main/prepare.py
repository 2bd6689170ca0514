"""`deqdist prepare`: tokenize a corpus into verified token shards (the work is deqdist.prepare)."""
from __future__ import annotations

import os


def add_parser(commands) -> None:
    p = commands.add_parser("prepare", help="tokenize a corpus into verified token shards (data.corpus=DIR)",
                            description="Train or load a tokenizer and write INPUT... as token shards with a "
                            "manifest to DIR (train with data.corpus=DIR); or check DIR with --verify. Running "
                            "the same command again resumes, keeping the shards that verify.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="text files (one document each), directories, "
                   ".jsonl or .parquet files (one document per record), optionally .gz/.bz2/.xz; prefix "
                   "valid=/test=/train= to put all of an input in that split")
    p.add_argument("--out", metavar="DIR", help="output directory (new, empty, or an interrupted prepare)")
    p.add_argument("--verify", metavar="DIR", help="check a prepared directory against its manifest and exit")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--vocab-size", type=int, metavar="N", help="train a byte-level BPE of N ids "
                     "(needs: pip install 'deqdist[prepare]')")
    tok.add_argument("--tokenizer", metavar="FILE", help="use this tokenizer.json (HF tokenizers)")
    tok.add_argument("--bytes", action="store_true", help="byte-level, 256 ids, no dependency (the default)")
    p.add_argument("--bos", metavar="TOKEN", help="with --tokenizer: token put before every document (default "
                   "<|endoftext|> if it has one)")
    p.add_argument("--no-bos", action="store_true", help="with --tokenizer: put no token before documents")
    p.add_argument("--field", default="text", metavar="NAME", help="text field of .jsonl/.parquet records "
                   "(default: text)")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8), metavar="N",
                   help="tokenizing processes (default: CPU count, at most 8; 0: in this process); the output does "
                   "not depend on it")
    p.add_argument("--split-fractions", default="0.98,0.01,0.01", metavar="T,V,S", help="train,valid,test "
                   "shares, chosen per document by a seeded hash of its text (default 0.98,0.01,0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash and the tokenizer's sample")
    p.add_argument("--shard-tokens", type=int, default=1 << 26, metavar="N", help="ids per shard (default 2^26)")
    p.add_argument("--sample-bytes", type=int, default=256 << 20, metavar="N", help="cap on the text a BPE is "
                   "trained on (default 256 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages on stderr")
    p.set_defaults(run=run)


def run(args) -> int:
    from deqdist.prepare.command import run_prepare

    return run_prepare(args)
