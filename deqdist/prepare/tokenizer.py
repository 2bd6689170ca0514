"""Tokenizers: byte-level (no dependency), a byte-level BPE trained here, or a given tokenizer.json.

A tokenizer is known by the sha256 of its serialised form (tokenizer.json's
bytes; a fixed string for byte-level), never by a name.

BOS/EOS policy, the same for every split and every document:
- byte-level: no special ids; ids are the text's UTF-8 bytes and documents
  follow each other directly, so the id stream is the text itself.
- trained BPE: `<|endoftext|>` is id 0 and is put *before* every document (a
  BOS), so every document, the first one too, starts right after it; there is
  no separate EOS (the next document's BOS ends the previous one).
- a given tokenizer.json: its `--bos` token (default `<|endoftext|>` when the
  vocabulary has it, otherwise none) before every document, as above.
`encode` never adds special tokens itself; `Codec.document` does, and `decode`
shows special tokens as text (a BOS in generated text is a document break).

Training reads only a capped, seeded sample (see shards.sample), so its memory
is bounded by the cap, not the corpus; no normaliser is used (some are
quadratic on long documents) and long documents are cut before encoding
(shards.pieces), so no step sees more than one piece at a time.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from deqdist.prepare.errors import PrepareError, require

ENDOFTEXT = "<|endoftext|>"
BYTES_ID = b"deqdist byte-level tokenizer v1: id = UTF-8 byte, no special ids"
MAX_VOCAB = 1 << 31


class ByteCodec:
    kind = "bytes"
    vocab_size = 256
    bos_id = None
    bos = None
    sha256 = hashlib.sha256(BYTES_ID).hexdigest()

    def to_json(self) -> str | None:
        return None

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts]

    def document(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        ids = np.asarray(list(ids), dtype=np.int64)
        ids = np.where((ids >= 0) & (ids < 256), ids, 0xFF).astype(np.uint8)
        return ids.tobytes().decode("utf-8", errors="replace")


class BPECodec:
    """A HF `tokenizers` Tokenizer, its serialised JSON, and the BOS put before each document."""

    kind = "bpe"

    def __init__(self, text: str, bos: str | None):
        tk = require("tokenizers", "a BPE tokenizer")
        try:
            self.tok = tk.Tokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception for a bad file
            raise PrepareError(f"not a tokenizer.json the `tokenizers` library can load ({e})") from None
        self.text = text
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))
        self.bos = bos
        self.bos_id = None
        if bos is not None:
            self.bos_id = self.tok.token_to_id(bos)
            if self.bos_id is None:
                raise PrepareError(f"the tokenizer has no token {bos!r} to put before each document; give --bos "
                                   f"with a token it has")
        self._fast = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)

    def to_json(self) -> str:
        return self.text

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32) for e in self._fast(list(texts), add_special_tokens=False)]

    def document(self, text: str) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if self.bos_id is not None else []) + list(ids)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self.tok.decode(ids, skip_special_tokens=False)


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPECodec:
    """A byte-level BPE with `vocab_size` ids (id 0 = <|endoftext|>) trained on `texts`."""
    if not 256 + 1 < vocab_size <= MAX_VOCAB:
        raise PrepareError(f"--vocab-size {vocab_size} must be above 257 (the 256 bytes and {ENDOFTEXT}); "
                           f"use --bytes for a byte-level corpus")
    tk = require("tokenizers", "training a BPE tokenizer (--vocab-size)")
    tok = tk.Tokenizer(tk.models.BPE())
    # use_regex=True is GPT-2's pre-split: merges never cross a word/space boundary.
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer)
    return BPECodec(tok.to_str(), ENDOFTEXT)


def load_file(path: str | os.PathLike, bos: str | None = "") -> BPECodec:
    """A given tokenizer.json; bos "" means <|endoftext|> if the vocabulary has it, else none."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"cannot read tokenizer file {path} ({e}); give a tokenizer.json") from None
    try:
        if bos == "":
            probe = BPECodec(text, None)
            bos = ENDOFTEXT if probe.tok.token_to_id(ENDOFTEXT) is not None else None
        return BPECodec(text, bos)
    except PrepareError as e:
        raise PrepareError(f"{path}: {e}") from None


def from_saved(kind: str, text: str | None, bos: str | None) -> ByteCodec | BPECodec:
    """The codec a manifest describes (kind and bos) with its saved tokenizer.json text."""
    if kind == "bytes":
        return ByteCodec()
    if text is None:
        raise PrepareError("the manifest names a BPE tokenizer but its tokenizer.json is missing")
    return BPECodec(text, bos)


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 up to 65,536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
