"""The trainer's side of `deqdist prepare`: data.corpus=DIR reads the shards as one stream per split,
refuses damage and a too-small vocabulary at start, and a resume on another corpus."""
import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from preputil import ROOT, bpe_dir, bytes_dir, cli, copy, inputs  # noqa: F401

from deqdist.data import DataError, load_corpus
from deqdist.data.prepared import ShardedTokens
from deqdist.data.windows import WindowReader
from deqdist.prepare import manifest


def _stream(root, split):
    m = manifest.load(root)
    return np.concatenate([np.fromfile(root / r["file"], m["dtype"]) for r in m["splits"][split]["shards"]])


def test_splits_are_the_shards_end_to_end(bpe_dir):
    c = load_corpus(str(bpe_dir), vocab_size=600)
    m = manifest.load(bpe_dir)
    assert c.kind == "tokens" and c.vocab_size == 600 and c.sha256 == m["fingerprint"]
    for s in manifest.SPLITS:
        assert np.array_equal(np.asarray(c.split(s)), _stream(bpe_dir, s))
        assert c.bpt(s) == pytest.approx(m["splits"][s]["bytes"] / m["splits"][s]["tokens"])
    assert c.info()["tokenizer"]["sha256"] == m["tokenizer"]["sha256"]
    text = "def f(x):\n    return x\n"
    assert c.encode(text)[0] == 0 and c.decode(c.encode(text)[1:]) == text
    assert load_corpus(str(bpe_dir)).vocab_size == 600  # the tokenizer's when model.vocab_size is unset


def test_windows_cross_shard_boundaries_and_pickle(bpe_dir):
    a = load_corpus(str(bpe_dir)).train
    assert isinstance(a, ShardedTokens) and len(a.paths) > 2
    flat = _stream(bpe_dir, "train")
    edge = int(a.bounds[1])
    starts = np.array([0, edge - 5, edge - 1, edge, len(flat) - 33])
    want = WindowReader(flat, 32)(starts)
    for reader in (WindowReader(a, 32), pickle.loads(pickle.dumps(WindowReader(a, 32)))):
        got = reader(starts)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert len(pickle.dumps(a)) < 2000  # paths, not data
    assert np.array_equal(a[edge - 3: edge + 3], flat[edge - 3: edge + 3]) and a[edge] == flat[edge]


def test_damaged_shard_is_refused_at_start(tmp_path, bpe_dir):
    d = copy(bpe_dir, tmp_path / "d")
    shard = d / "train-00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[7] ^= 0x40
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="train-00001.bin does not match its sha256.*prepare --verify"):
        load_corpus(str(d), vocab_size=600)
    shard.write_bytes(bytes(raw[:-2]))
    with pytest.raises(DataError, match="train-00001.bin has .* bytes, the manifest says"):
        load_corpus(str(d), vocab_size=600)


def test_vocab_too_small_is_refused(bpe_dir):
    top = manifest.load(bpe_dir)["totals"]["max_id"]
    with pytest.raises(DataError, match=rf"holds token id {top} >= model.vocab_size {top}.*model.vocab_size=600"):
        load_corpus(str(bpe_dir), vocab_size=top)
    assert load_corpus(str(bpe_dir), vocab_size=top + 1).vocab_size == top + 1


READER = textwrap.dedent("""
    import sys, numpy as np
    from deqdist.data import load_corpus
    from deqdist.data.pipeline import train_dataset
    root, pi, pc, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    c = load_corpus(root)
    ds = train_dataset(c.train, seq_len=32, per_host_batch=8 // pc, seed=3, process_index=pi, process_count=pc)
    np.save(out, np.stack([ds[t]["inputs"] for t in range(6)]))
""")


def test_two_processes_read_disjoint_windows(tmp_path, bpe_dir):
    def run(pi, pc):
        out = tmp_path / f"p{pi}of{pc}.npy"
        procs.append(subprocess.Popen([sys.executable, "-c", READER, str(bpe_dir), str(pi), str(pc), str(out)],
                                      cwd=ROOT))
        return out

    procs = []
    outs = [run(0, 2), run(1, 2), run(0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    a, b, whole = (np.load(o) for o in outs)
    # Host i holds rows [4i, 4i+4) of every global batch: together they are the one-process batches.
    assert np.array_equal(np.concatenate([a, b], axis=1), whole)
    rows = lambda x: {r.tobytes() for r in x.reshape(-1, 32)}
    assert not rows(a) & rows(b)
    flat = _stream(bpe_dir, "train")
    view = np.lib.stride_tricks.sliding_window_view(flat, 32)
    assert rows(a) <= {r.astype(np.int32).tobytes() for r in view}


TRAIN = ["model.vocab_size=600", "model.d_model=32", "model.n_heads=4", "model.d_mlp=64", "model.seq_len=32",
         "data.global_batch_size=8", "data.eval_batches=1", "train.test_batches=1", "train.steps=2",
         "train.warmup_steps=1", "train.warmup_explicit_steps=1", "train.eval_every=0", "checkpoint.every=1",
         "logging.progress=off", "logging.sample_tokens=0", "solver.max_iter=4", "solver.bwd.max_iter=4",
         "train.jac_reg_every=0"]


def test_train_start_refuses_damage_and_vocab_with_one_line(tmp_path, bpe_dir):
    d = copy(bpe_dir, tmp_path / "d")
    (d / "test-00000.bin").write_bytes((d / "test-00000.bin").read_bytes()[:-2])
    for corpus, extra, want in [(d, [], "test-00000.bin has"),
                                (bpe_dir, ["model.vocab_size=300"], "holds token id")]:
        r = cli("train", "--run-dir", tmp_path / "run", f"data.corpus={corpus}", *TRAIN, *extra)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and want in r.stderr, r.stderr
        assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, bpe_dir):
    run = tmp_path_factory.mktemp("run") / "r"
    r = cli("train", "--run-dir", run, f"data.corpus={bpe_dir}", *TRAIN, "--stop-after", "1", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def test_resume_on_another_corpus_is_refused(stopped_run, bpe_dir, tmp_path, inputs):
    info = json.loads((stopped_run / "corpus.json").read_text())
    assert info["sha256"] == manifest.load(bpe_dir)["fingerprint"]
    other = tmp_path / "other"  # the same text, other shard boundaries: another window order
    r = cli("prepare", inputs["jsonl"], "--out", other, "--tokenizer", bpe_dir / "tokenizer.json",
            "--shard-tokens", "5000", "--split-fractions", "0.5,0.25,0.25", "--quiet")
    assert r.returncode == 0, r.stderr
    r = cli("train", "--run-dir", stopped_run, f"data.corpus={other}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "with fingerprint" in r.stderr and "use a new --run-dir" in r.stderr


def test_generate_speaks_text(stopped_run):
    r = cli("generate", stopped_run, "--prompt", "def main(", "--tokens", "4", "--temperature", "0", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("def main(") and "generate (KV cache, 4 tokens)" in r.stderr
