"""Every bad-data case raises DataError with one line naming the path/number."""
import numpy as np
import pytest

from deqdist.data.config import DataConfig
from deqdist.data.corpus import Corpus
from deqdist.data.errors import DataError
from deqdist.data.pipeline import eval_iterator, train_iterator
from deqdist.data.sources import load_corpus


def raises(fn, *needles):
    with pytest.raises(DataError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, ValueError)
    for needle in needles:
        assert str(needle) in msg, msg
    return msg


def test_missing_path(tmp_path):
    raises(lambda: load_corpus(str(tmp_path / "nope.txt")), "nope.txt", "does not exist")


def test_empty_file_and_dirs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    raises(lambda: load_corpus(str(tmp_path / "empty.txt")), "empty.txt", "empty")
    (tmp_path / "empty.bin").write_bytes(b"")
    raises(lambda: load_corpus(str(tmp_path / "empty.bin")), "empty.bin", "empty")
    (tmp_path / "d").mkdir()
    raises(lambda: load_corpus(str(tmp_path / "d"), cache_dir=tmp_path / "c"), str(tmp_path / "d"), "no")
    (tmp_path / "d" / "a.txt").write_bytes(b"")
    raises(lambda: load_corpus(str(tmp_path / "d"), cache_dir=tmp_path / "c"), "only empty files")


def test_corpus_shorter_than_a_window(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"x" * 100)  # train = 90 bytes
    corpus = load_corpus(str(path))
    cfg = DataConfig(seq_len=90, global_batch_size=2)
    raises(lambda: train_iterator(corpus, cfg, process_index=0, process_count=1), "90 tokens", "seq_len+1 = 91")
    raises(lambda: eval_iterator(corpus, cfg, process_index=0, process_count=1), "valid split", "5 tokens")


def test_eval_split_smaller_than_one_batch():
    ids = np.arange(1000, dtype=np.uint16)
    corpus = Corpus(ids, ids[:100], ids[:0], vocab_size=1000, name="c", kind="tokens")
    cfg = DataConfig(seq_len=10, global_batch_size=16)
    raises(lambda: eval_iterator(corpus, cfg, process_index=0, process_count=1), "9 windows", "batch of 16")
    raises(lambda: eval_iterator(corpus, cfg, "test", process_index=0, process_count=1), "test split", "0 tokens")


def test_token_ids_out_of_vocab(tmp_path):
    ids = np.array([1, 2, 3, 70_000] * 10, dtype=np.uint32)
    ids.tofile(tmp_path / "t.bin")
    raises(lambda: load_corpus(str(tmp_path / "t.bin"), token_dtype="uint32", vocab_size=50257), "70000", "50257", "t.bin")
    np.save(tmp_path / "t.npy", ids)
    raises(lambda: load_corpus(str(tmp_path / "t.npy"), vocab_size=1000), "70000", "70001")
    np.save(tmp_path / "neg.npy", np.array([1, -4, 2]))
    raises(lambda: load_corpus(str(tmp_path / "neg.npy")), "-4")
    (tmp_path / "ascii.txt").write_bytes("naïve".encode() * 10)
    raises(lambda: load_corpus(str(tmp_path / "ascii.txt"), vocab_size=128), "ascii.txt", "195", "128")


def test_bad_token_files(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    raises(lambda: load_corpus(str(tmp_path / "odd.bin")), "odd.bin", "7 bytes", "token_dtype")
    np.save(tmp_path / "f.npy", np.ones(10, np.float32))
    raises(lambda: load_corpus(str(tmp_path / "f.npy")), "f.npy", "float32")
    raises(lambda: load_corpus(str(tmp_path / "odd.bin"), token_dtype="int8"), "int8", "uint16")


def test_unknown_file_types(tmp_path):
    (tmp_path / "corpus.txt.gz").write_bytes(b"\x1f\x8b" + b"x" * 100)
    raises(lambda: load_corpus(str(tmp_path / "corpus.txt.gz")), "'.gz'", "corpus.txt.gz")
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text("hello " * 100)
    (d / "shard0.bin").write_bytes(b"\x00\x01" * 100)
    raises(lambda: load_corpus(str(d), cache_dir=tmp_path / "c"), "shard0.bin", "train.bin")


def test_batch_not_divisible_by_processes():
    ids = np.arange(1000, dtype=np.uint16)
    corpus = Corpus(ids, ids, ids, vocab_size=1000, name="c", kind="tokens")
    cfg = DataConfig(seq_len=8, global_batch_size=10)
    raises(lambda: train_iterator(corpus, cfg, process_index=0, process_count=4), "10", "4 processes")
    raises(lambda: train_iterator(corpus, cfg, process_index=4, process_count=4), "process_index 4")


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("seq_len", 0, "data.seq_len is 0"),
        ("global_batch_size", -2, "-2"),
        ("seed", -1, "data.seed"),
        ("vocab_size", 0, "data.vocab_size"),
        ("eval_batches", 0, "data.eval_batches"),
        ("worker_count", -1, "data.worker_count"),
        ("token_dtype", "float16", "float16"),
        ("split_fractions", (0.9, 0.2, 0.05), "sum to 1"),
    ],
)
def test_config_validation(field, value, needle):
    raises(lambda: DataConfig(**{field: value}).validate(), needle)


def test_config_accepts_yaml_lists():
    cfg = DataConfig(split_fractions=[0.8, 0.1, 0.1]).validate()
    assert cfg.split_fractions == (0.8, 0.1, 0.1)


def test_token_corpus_has_no_byte_decode(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "t.bin")
    raises(lambda: load_corpus(str(tmp_path / "t.bin")).decode([1, 2]), "tokenizer")
