"""The manifest: what it records, its fingerprint, and `--verify` catching each kind of damage."""
import json

import pytest
from preputil import bpe_dir, bytes_dir, cli, copy, inputs  # noqa: F401

from deqdist.prepare import manifest
from deqdist.prepare.errors import PrepareError


def test_manifest_records_what_the_issue_asks(bpe_dir, inputs):
    m = manifest.load(bpe_dir)
    assert m["version"] == manifest.VERSION and m["command"]["prog"] == "deqdist prepare"
    t = m["tokenizer"]
    assert t["kind"] == "bpe" and t["vocab_size"] == 600 and t["bos_id"] == 0 and t["eos_id"] is None
    assert t["sha256"] == manifest.sha256_file(bpe_dir / "tokenizer.json")
    assert m["dtype"] == "uint16"
    (inp,) = m["inputs"]
    assert inp["size"] == inputs["jsonl"].stat().st_size and inp["sha256"] == manifest.sha256_file(inputs["jsonl"])
    assert m["split_policy"]["fractions"] == [0.6, 0.2, 0.2]
    assert {"tokens", "documents", "sha256"} <= set(m["splits"]["train"]["shards"][0])
    assert set(m["totals"]) >= {"bytes", "tokens", "bytes_per_token", "max_id"}
    assert m["fingerprint"] == manifest.fingerprint(m)
    assert manifest.verify(bpe_dir)["fingerprint"] == m["fingerprint"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "docs", "tokenizer", "manifest"])
def test_verify_catches_damage(tmp_path, bpe_dir, damage):
    d = copy(bpe_dir, tmp_path / "d")
    shard = d / "valid-00000.bin"
    if damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[-1] ^= 1
        shard.write_bytes(bytes(raw))
        want = "valid-00000.bin does not match its sha256"
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-2])
        want = "valid-00000.bin has"
    elif damage == "delete":
        shard.unlink()
        want = "valid-00000.bin is missing"
    elif damage == "docs":
        (d / "valid-00000.docs.bin").write_bytes(b"\0" * (d / "valid-00000.docs.bin").stat().st_size)
        want = "valid-00000.docs.bin does not match"
    elif damage == "tokenizer":
        (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text().replace("<|endoftext|>", "<|eot|>"))
        want = "tokenizer.json is missing or does not match"
    else:
        m = json.loads((d / "manifest.json").read_text())
        m["splits"]["valid"]["shards"].pop()
        (d / "manifest.json").write_text(json.dumps(m))
        want = "fingerprint does not match"
    with pytest.raises(PrepareError, match=want):
        manifest.verify(d)
    r = cli("prepare", "--verify", d)
    assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_not_a_prepared_directory(tmp_path):
    with pytest.raises(PrepareError, match="has no manifest.json"):
        manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(PrepareError, match="damaged or not a deqdist manifest"):
        manifest.load(tmp_path)
