"""`deqdist prepare`: a raw corpus -> a tokenizer and a directory of verified token shards.

    inputs.py     documents from text files, directories, .jsonl and .parquet (compressed or not)
    tokenizer.py  byte-level, a trained byte-level BPE (HF `tokenizers`) or a given tokenizer.json
    shards.py     tokenizing in worker processes into fixed-size shards, resumable
    manifest.py   manifest.json: what the shards hold, their hashes, the fingerprint; verification
    command.py    the command itself (cli.py only parses and dispatches)

The data layer reads a prepared directory through manifest.py; this package
imports nothing from data/, model/ or train/.
"""
from deqdist.prepare.errors import PrepareError

__all__ = ["PrepareError"]
