"""Sharding: worker-count independence, the split policy, an exact round trip, and resume after kill -9."""
import json
import signal

import numpy as np
import pytest
from preputil import SHARD, bpe_dir, bytes_dir, cli, copy, inputs, run_prepare, shard_bytes, texts  # noqa: F401

from deqdist.prepare import manifest, shards
from deqdist.prepare.tokenizer import BPECodec


def test_same_bytes_from_0_1_and_2_workers(tmp_path, inputs, bpe_dir):
    m = {}
    for w in (0, 2):
        m[w] = run_prepare([inputs["jsonl"]], tmp_path / f"w{w}", vocab_size=600, workers=w)
        assert shard_bytes(tmp_path / f"w{w}") == shard_bytes(bpe_dir)  # bpe_dir: 2 workers
    m[1] = json.loads((bpe_dir / manifest.MANIFEST).read_text())
    assert m[0]["fingerprint"] == m[1]["fingerprint"] == m[2]["fingerprint"]
    assert (tmp_path / "w0" / "tokenizer.json").read_bytes() == (bpe_dir / "tokenizer.json").read_bytes()


def test_split_is_a_seeded_hash_of_the_document():
    t = texts()["csv.py"]
    assert shards.split_of(t, 0, (0.6, 0.2, 0.2)) == shards.split_of(t, 0, (0.6, 0.2, 0.2))
    docs = [f"document {i}" for i in range(3000)]
    got = [shards.split_of(d, 0, (0.6, 0.2, 0.2)) for d in docs]
    share = {s: got.count(s) / len(got) for s in ("train", "valid", "test")}
    assert abs(share["train"] - 0.6) < 0.04 and abs(share["valid"] - 0.2) < 0.04
    other = [shards.split_of(d, 1, (0.6, 0.2, 0.2)) for d in docs]
    assert got != other  # another seed, another split


def _documents(root):
    """Every split's documents, decoded back from the shards through the document offsets."""
    m = manifest.load(root)
    dtype = np.dtype(m["dtype"])
    out = {}
    for s in manifest.SPLITS:
        ids = np.concatenate([np.fromfile(root / r["file"], dtype) for r in m["splits"][s]["shards"]] or [[]])
        starts, base = [], 0
        for r in m["splits"][s]["shards"]:
            starts += [base + int(o) for o in np.fromfile(root / r["docs_file"], "<u8")]
            base += r["tokens"]
        assert sum(r["documents"] for r in m["splits"][s]["shards"]) == len(starts) == m["splits"][s]["documents"]
        out[s] = [ids[a:b] for a, b in zip(starts, starts[1:] + [len(ids)])]
    return m, out


def test_round_trip_text_ids_text_is_exact(bytes_dir, bpe_dir):
    want = sorted(texts().values())
    m, docs = _documents(bytes_dir)
    assert sorted(bytes(d.astype(np.uint8)).decode() for s in docs.values() for d in s) == want
    assert m["totals"]["bytes"] == m["totals"]["tokens"] == sum(len(t.encode()) for t in want)
    m, docs = _documents(bpe_dir)
    codec = BPECodec((bpe_dir / "tokenizer.json").read_text(), "<|endoftext|>")
    assert all(d[0] == codec.bos_id == 0 for s in docs.values() for d in s)  # BOS before every document
    assert sorted(codec.decode(d[1:].tolist()) for s in docs.values() for d in s) == want
    # Every split has documents and several shards of SHARD ids (the last one shorter).
    for s in manifest.SPLITS:
        recs = m["splits"][s]["shards"]
        assert recs and all(r["tokens"] == SHARD for r in recs[:-1]) and 0 < recs[-1]["tokens"] <= SHARD
    assert m["dtype"] == "uint16" and m["totals"]["max_id"] < 600
    assert m["totals"]["bytes_per_token"] == pytest.approx(m["totals"]["bytes"] / m["totals"]["tokens"])


def test_resume_after_kill_mid_shard_keeps_the_written_shards(tmp_path, inputs, bytes_dir):
    out = tmp_path / "out"
    args = ["prepare", inputs["jsonl"], "--out", out, "--bytes", "--shard-tokens", SHARD, "--split-fractions",
            "0.6,0.2,0.2", "--workers", "1"]
    killed = cli(*args, env={shards.KILL_ENV: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Three whole shards, a half-written one, no manifest.
    assert len(list(out.glob("*-?????.bin"))) == 3 and (out / shards.PROGRESS).is_file()
    assert not (out / manifest.MANIFEST).exists() and list(out.glob(".tmp-*"))
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "resuming: 3 shard(s) of an earlier run verify and are kept" in r.stderr
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # not rewritten
    assert shard_bytes(out) == shard_bytes(bytes_dir)  # the same as one uninterrupted run
    assert not list(out.glob(".tmp-*")) and not (out / shards.PROGRESS).exists()
    assert cli("prepare", "--verify", out).returncode == 0


def test_rerun_rewrites_a_damaged_shard_only(tmp_path, bytes_dir, inputs):
    out = copy(bytes_dir, tmp_path / "copy")
    victim = out / "train-00001.bin"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    r = cli("prepare", "--verify", out)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "train-00001.bin does not match its sha256" in r.stderr
    # The same command again keeps train-00000 and rewrites from train-00001 on.
    m = run_prepare([inputs["jsonl"]], out)
    assert shard_bytes(out) == shard_bytes(bytes_dir)
    assert m["fingerprint"] == manifest.load(bytes_dir)["fingerprint"]
