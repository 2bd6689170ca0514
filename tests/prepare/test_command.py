"""`deqdist prepare` on the command line: inputs of each format, a given tokenizer, bad input (exit 2)."""
import pytest
from preputil import FRACTIONS, SHARD, bpe_dir, bytes_dir, cli, inputs, run_prepare, shard_bytes  # noqa: F401

from deqdist.prepare import manifest


def test_cli_writes_what_the_library_writes(tmp_path, inputs, bytes_dir):
    out = tmp_path / "out"
    r = cli("prepare", inputs["jsonl"], "--out", out, "--shard-tokens", SHARD, "--split-fractions",
            ",".join(map(str, FRACTIONS)), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "prepared" in r.stderr and "B/s" in r.stderr  # the progress bar, on stderr
    assert shard_bytes(out) == shard_bytes(bytes_dir)  # --bytes is the default
    ok = cli("prepare", "--verify", out)
    assert ok.returncode == 0 and ": ok," in ok.stdout


@pytest.mark.parametrize("fmt", ["jsonl_gz", "parquet"])
def test_other_formats_give_the_same_shards(tmp_path, inputs, bytes_dir, fmt):
    if fmt not in inputs:
        pytest.skip("pyarrow is not installed (pip install 'deqdist[prepare]')")
    run_prepare([inputs[fmt]], tmp_path / "o")
    assert shard_bytes(tmp_path / "o") == shard_bytes(bytes_dir)


def test_a_given_tokenizer_is_used_as_is(tmp_path, inputs, bpe_dir):
    m = run_prepare([inputs["tree"]], tmp_path / "o", tokenizer_file=str(bpe_dir / "tokenizer.json"))
    assert m["tokenizer"]["sha256"] == manifest.load(bpe_dir)["tokenizer"]["sha256"]
    assert m["tokenizer"]["bos_id"] == 0  # it has <|endoftext|>
    assert (tmp_path / "o" / "tokenizer.json").read_bytes() == (bpe_dir / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("args,want", [
    ([], "give INPUT... and --out DIR"),
    (["--verify", "{tmp}"], "has no manifest.json"),
    (["{jsonl}", "--out", "{tmp}/o", "--split-fractions", "0.5,0.6,0"], "--split-fractions must be"),
    (["{jsonl}", "--out", "{tmp}/o", "--bos", "<s>"], "--bos/--no-bos go with --tokenizer"),
    (["{jsonl}", "--out", "{tmp}/o", "--vocab-size", "100"], "--vocab-size 100 must be above 257"),
    (["{jsonl}", "--out", "{tmp}/o", "--bytes", "--vocab-size", "300"], "not allowed with argument"),
    (["{jsonl}", "--out", "{tmp}/o", "--shard-tokens", "0"], "--shard-tokens must be an integer >= 1"),
    (["{jsonl}", "--out", "{tmp}/o", "--field", "body"], "has no text field 'body'"),
    (["{tmp}/missing.txt", "--out", "{tmp}/o"], "does not exist"),
    (["{jsonl}", "--out", "{tmp}/foreign"], "is not empty and holds no earlier `deqdist prepare`"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, inputs, args, want):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    argv = [a.format(tmp=tmp_path, jsonl=inputs["jsonl"]) for a in args]
    r = cli("prepare", *argv, "--quiet")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and want in r.stderr, r.stderr
    assert not (tmp_path / "o").exists() and [p.name for p in (tmp_path / "foreign").iterdir()] == ["notes.txt"]


def test_other_inputs_never_overwrite_a_prepared_directory(tmp_path, inputs, bytes_dir):
    d = tmp_path / "d"
    run_prepare([inputs["jsonl"]], d)
    before = shard_bytes(d)
    r = cli("prepare", inputs["tree"], "--out", d, "--quiet")
    assert r.returncode == 2 and "holds a `deqdist prepare` of other inputs or settings" in r.stderr, r.stderr
    assert shard_bytes(d) == before == shard_bytes(bytes_dir)


BLOCKED = ("import sys; sys.modules['tokenizers'] = sys.modules['pyarrow'] = None; "  # as if not installed
           "from deqdist.cli import main; sys.exit(main(sys.argv[1:]))")


def test_without_the_prepare_extra(tmp_path, inputs, bytes_dir):
    import subprocess
    import sys

    from preputil import ROOT

    run = lambda *a: subprocess.run([sys.executable, "-c", BLOCKED, *map(str, a)], cwd=ROOT, capture_output=True,
                                    text=True, timeout=300)
    r = run("prepare", inputs["jsonl"], "--out", tmp_path / "bpe", "--vocab-size", 300, "--quiet")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "needs the Python package 'tokenizers'; install it with: pip install 'deqdist[prepare]'" in r.stderr
    assert not (tmp_path / "bpe").exists()
    # Byte-level needs neither package, to prepare or to verify.
    r = run("prepare", inputs["jsonl"], "--out", tmp_path / "b", "--shard-tokens", SHARD, "--split-fractions",
            ",".join(map(str, FRACTIONS)), "--quiet")
    assert r.returncode == 0, r.stderr
    assert shard_bytes(tmp_path / "b") == shard_bytes(bytes_dir)
    assert run("prepare", "--verify", tmp_path / "b").returncode == 0
