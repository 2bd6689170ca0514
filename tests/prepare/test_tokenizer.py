"""Tokenizers: exact round trips, the BOS policy, content hashes, and cutting long documents."""
import hashlib

import numpy as np
import pytest
from preputil import texts

from deqdist.prepare import shards, tokenizer
from deqdist.prepare.errors import PrepareError

SAMPLE = list(texts().values())
UNICODE = "naïve café — ∑ x² 🙂\r\n\ttabs  and  spaces\n\n\n"


def test_bytes_round_trip_and_no_special_ids():
    c = tokenizer.ByteCodec()
    for t in SAMPLE[:3] + [UNICODE]:
        ids = c.document(t)
        assert ids == list(t.encode()) and c.decode(ids) == t
    assert c.bos_id is None and c.vocab_size == 256 and c.to_json() is None


@pytest.fixture(scope="module")
def bpe():
    pytest.importorskip("tokenizers")
    return tokenizer.train_bpe(iter(SAMPLE), 700)


def test_bpe_round_trip_is_exact(bpe):
    for t in SAMPLE + [UNICODE, " leading space", "trailing\n"]:
        ids = bpe.document(t)
        assert ids[0] == bpe.bos_id == 0  # <|endoftext|> before every document
        assert bpe.decode(ids[1:]) == t
        assert np.array_equal(bpe.encode_batch([t])[0], ids[1:])
    assert bpe.vocab_size == 700 and bpe.tok.id_to_token(0) == tokenizer.ENDOFTEXT
    # It compresses: a BPE of 700 ids on Python source beats 1 byte per id clearly.
    n = sum(len(bpe.document(t)) for t in SAMPLE)
    assert sum(len(t.encode()) for t in SAMPLE) / n > 1.8


def test_bpe_is_known_by_content(bpe, tmp_path):
    assert bpe.sha256 == hashlib.sha256(bpe.to_json().encode()).hexdigest()
    again = tokenizer.train_bpe(iter(SAMPLE), 700)
    assert again.sha256 == bpe.sha256  # same sample, same tokenizer
    other = tokenizer.train_bpe(iter(SAMPLE[:-3]), 700)
    assert other.sha256 != bpe.sha256
    f = tmp_path / "tok.json"
    f.write_text(bpe.to_json())
    given = tokenizer.load_file(f)
    assert given.sha256 == bpe.sha256 and given.bos_id == 0
    assert tokenizer.load_file(f, None).bos_id is None
    with pytest.raises(PrepareError, match="no token '<s>'"):
        tokenizer.load_file(f, "<s>")
    f.write_text("{not json")
    with pytest.raises(PrepareError, match="tok.json"):
        tokenizer.load_file(f)


def test_vocab_size_too_small():
    pytest.importorskip("tokenizers")
    with pytest.raises(PrepareError, match="--vocab-size 200 must be above 257"):
        tokenizer.train_bpe(iter(SAMPLE), 200)


def test_pieces_cut_where_the_ids_do_not_change(bpe):
    text = "\n".join(SAMPLE)
    parts = shards.pieces(text, 4096)
    assert "".join(parts) == text and len(parts) > 50 and max(map(len, parts)) <= 4096
    whole = bpe.encode_batch([text])[0]
    assert np.array_equal(np.concatenate(bpe.encode_batch(parts)), whole)


def test_pieces_of_one_long_line_are_cut_hard():
    parts = shards.pieces("x" * 10_000, 4096)
    assert [len(p) for p in parts] == [4096, 4096, 1808]


def test_dtype_by_vocab():
    assert tokenizer.dtype_for(65536) == np.uint16 and tokenizer.dtype_for(65537) == np.uint32
