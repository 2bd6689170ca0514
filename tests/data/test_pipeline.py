"""grain pipelines: batch layout, seeding, per-host sharding, checkpointing, eval."""
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from deqdist.data.config import DataConfig
from deqdist.data.corpus import Corpus
from deqdist.data.pipeline import batch_spec, eval_iterator, train_iterator
from deqdist.data.sources import load_corpus
from deqdist.data.windows import TrainWindows


def arange_corpus(n_train=10_000, n_eval=2_000):
    # Each id is its own position, so a window's first input is its start.
    train = np.arange(n_train, dtype=np.uint32)
    valid = np.arange(n_eval, dtype=np.uint32) + n_train
    return Corpus(train, valid, valid.copy(), vocab_size=n_train + n_eval, name="arange", kind="tokens")


def take(it, n):
    return [next(it) for _ in range(n)]


def starts(batches):
    return np.concatenate([b["inputs"][:, 0] for b in batches])


def test_shapes_dtypes_and_shift(tmp_path):
    corpus = load_corpus("builtin", cache_dir=tmp_path)
    cfg = DataConfig(seq_len=32, global_batch_size=8).validate()
    train_bytes = np.asarray(corpus.train).tobytes()
    for b in take(train_iterator(corpus, cfg, process_index=0, process_count=1), 3):
        assert set(b) == {"inputs", "targets"}
        assert b["inputs"].shape == b["targets"].shape == (8, 32)
        assert b["inputs"].dtype == b["targets"].dtype == np.int32
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
        # Windows are real corpus spans.
        assert train_bytes.find(b["inputs"][0].astype(np.uint8).tobytes()) >= 0
    assert batch_spec(cfg)["inputs"] == ((8, 32), np.dtype(np.int32))


def test_windows_follow_the_corpus():
    corpus = arange_corpus()
    b = next(train_iterator(corpus, DataConfig(seq_len=16, global_batch_size=4), process_count=1, process_index=0))
    np.testing.assert_array_equal(b["inputs"], b["inputs"][:, :1] + np.arange(16))
    np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)


def test_seeds():
    corpus = arange_corpus()
    run = lambda seed: starts(take(train_iterator(corpus, DataConfig(seq_len=16, global_batch_size=8, seed=seed),
                                                  process_index=0, process_count=1), 5))
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_epochs_cover_grid_and_shift_offsets():
    n, L = 1_000, 10
    grid = TrainWindows(n, L, 123)
    corpus = arange_corpus(n_train=n)
    cfg = DataConfig(seq_len=L, global_batch_size=grid.num_windows)  # one batch = one epoch
    epochs = [np.sort(s["inputs"][:, 0]) for s in take(train_iterator(corpus, cfg, process_index=0, process_count=1), 6)]
    offsets = set()
    for e in epochs:
        assert len(set(e)) == grid.num_windows  # each window once per epoch
        np.testing.assert_array_equal(np.diff(e), L)
        assert e[-1] + L + 1 <= n
        offsets.add(int(e[0]))
    assert len(offsets) > 1 and max(offsets) < L


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_read_disjoint_blocks_of_the_global_batch(hosts):
    corpus = arange_corpus()
    cfg = DataConfig(seq_len=16, global_batch_size=8, seed=3)
    single = take(train_iterator(corpus, cfg, process_index=0, process_count=1), 4)
    per_host = [take(train_iterator(corpus, cfg, process_index=i, process_count=hosts), 4) for i in range(hosts)]
    for t in range(4):
        rows = [h[t]["inputs"] for h in per_host]
        assert all(r.shape == (8 // hosts, 16) for r in rows)
        np.testing.assert_array_equal(np.concatenate(rows), single[t]["inputs"])
    host_starts = [set(starts(h)) for h in per_host]
    for i in range(hosts):
        for j in range(i + 1, hosts):
            assert not host_starts[i] & host_starts[j]


def test_state_round_trip():
    corpus = arange_corpus()
    cfg = DataConfig(seq_len=16, global_batch_size=8)
    it = train_iterator(corpus, cfg, process_index=0, process_count=1)
    take(it, 3)
    state = it.get_state()
    expected = take(it, 3)
    other = train_iterator(corpus, cfg, process_index=0, process_count=1)
    other.set_state(state)
    for a, b in zip(take(other, 3), expected):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_orbax_checkpoint_restores_the_stream(tmp_path):
    corpus = arange_corpus()
    cfg = DataConfig(seq_len=16, global_batch_size=8, seed=7)
    it = train_iterator(corpus, cfg)
    take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 4)
    fresh = train_iterator(corpus, cfg)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        restored = mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    for a, b in zip(take(restored["data"], 4), expected):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["targets"], b["targets"])


def test_eval_is_ordered_non_overlapping_and_sharded():
    corpus = arange_corpus(n_eval=1_000)
    cfg = DataConfig(seq_len=10, global_batch_size=8)
    full = list(eval_iterator(corpus, cfg, process_index=0, process_count=1))
    # 999 // 10 = 99 windows -> 12 full batches of 8; 3 windows, spread over the split, are left out.
    assert len(full) == 12
    s = starts(full) - 10_000
    np.testing.assert_array_equal(s, np.arange(96) * 99 // 96 * 10)
    halves = [list(eval_iterator(corpus, cfg, process_index=i, process_count=2)) for i in range(2)]
    assert len(halves[0]) == len(halves[1]) == 12
    for t in range(12):
        np.testing.assert_array_equal(np.concatenate([h[t]["inputs"] for h in halves]), full[t]["inputs"])
    assert len(list(eval_iterator(corpus, cfg, max_batches=5, process_index=0, process_count=1))) == 5
    limited = DataConfig(seq_len=10, global_batch_size=8, eval_batches=3)
    assert len(list(eval_iterator(corpus, limited, "test", process_index=0, process_count=1))) == 3
    # A fresh iterator per evaluation gives the same batches again.
    again = list(eval_iterator(corpus, cfg, process_index=0, process_count=1))
    np.testing.assert_array_equal(starts(again), starts(full))


@pytest.mark.parametrize("hosts", [1, 2])
def test_a_short_eval_spreads_over_the_whole_split(hosts):
    # 20,000 ids = 1,999 windows of 10; 5 batches of 16 read 80 of them, evenly spaced.
    corpus = arange_corpus(n_eval=20_000)
    cfg = DataConfig(seq_len=10, global_batch_size=16, eval_batches=5)
    runs = [[list(eval_iterator(corpus, cfg, process_index=i, process_count=hosts)) for i in range(hosts)]
            for _ in range(2)]
    s = np.concatenate([np.concatenate([h[t]["inputs"][:, 0] for h in runs[0]]) for t in range(5)]) - 10_000
    assert len(s) == 80 and np.all(s % 10 == 0) and np.all(np.diff(s) >= 10)   # grid, no overlap
    assert s[0] == 0 and s[-1] >= 20_000 - 2 * 1_999 // 80 * 10                  # first to last stretch
    gaps = np.diff(s) // 10
    assert gaps.min() >= 1_999 // 80 and gaps.max() <= 1_999 // 80 + 1          # even stride
    # Every evaluation (and every run) of this corpus reads the same windows.
    again = np.concatenate([np.concatenate([h[t]["inputs"][:, 0] for h in runs[1]]) for t in range(5)]) - 10_000
    np.testing.assert_array_equal(again, s)


def test_worker_processes_give_the_same_stream():
    corpus = arange_corpus()
    base = DataConfig(seq_len=16, global_batch_size=8, seed=2)
    expected = starts(take(train_iterator(corpus, base, process_index=0, process_count=1), 4))
    it = train_iterator(corpus, DataConfig(seq_len=16, global_batch_size=8, seed=2, worker_count=1),
                        process_index=0, process_count=1)
    try:
        np.testing.assert_array_equal(starts(take(it, 4)), expected)
    finally:
        it.close()
