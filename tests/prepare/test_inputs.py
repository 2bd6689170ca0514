"""Reading inputs: formats, order, pinned splits, and one line naming file + byte offset for bad UTF-8."""
import gzip

import pytest
from preputil import cli, inputs, texts  # noqa: F401 (fixture)

from deqdist.prepare import inputs as inp
from deqdist.prepare.errors import PrepareError


def docs(path, field="text"):
    return [t for src in inp.expand([str(path)]) for t, _ in inp.documents(src, field)]


def test_every_format_gives_the_same_documents_in_order(inputs):
    want = sorted(texts().items())  # the tree is read in sorted path order
    assert docs(inputs["tree"]) == [t for _, t in want]
    in_order = list(texts().values())
    assert docs(inputs["jsonl"]) == in_order
    assert docs(inputs["jsonl_gz"]) == in_order
    if "parquet" in inputs:
        assert docs(inputs["parquet"]) == in_order
    # Byte counts are of the UTF-8 text.
    src = inp.expand([str(inputs["jsonl"])])[0]
    assert [n for _, n in inp.documents(src, "text")] == [len(t.encode()) for t in in_order]


def test_pinned_split_and_hidden_files(tmp_path):
    (tmp_path / "d" / ".git").mkdir(parents=True)
    (tmp_path / "d" / ".git" / "x").write_text("hidden")
    (tmp_path / "d" / "b.txt").write_text("b")
    (tmp_path / "d" / "a.txt").write_text("a")
    srcs = inp.expand([f"valid={tmp_path / 'd'}"])
    assert [s.path.name for s in srcs] == ["a.txt", "b.txt"] and {s.split for s in srcs} == {"valid"}
    with pytest.raises(PrepareError, match="does not exist"):
        inp.expand([str(tmp_path / "nope")])


@pytest.mark.parametrize("offset", [0, 5, (1 << 22) - 1, 1 << 22, (1 << 22) + 7])
def test_bad_utf8_names_the_byte_offset(tmp_path, offset):
    # Offsets around the 4 MiB read block of the up-front check, including a character cut by it.
    raw = bytearray(b"a" * (offset + 20))
    raw[offset] = 0xFF
    p = tmp_path / "bad.txt"
    p.write_bytes(bytes(raw))
    with pytest.raises(PrepareError, match=rf"bad.txt: byte offset {offset} is not valid UTF-8"):
        inp.file_digest(inp.expand([str(p)])[0])


def test_utf8_character_across_blocks_is_fine(tmp_path):
    raw = b"a" * ((1 << 22) - 1) + "é".encode() + b"z"
    p = tmp_path / "ok.txt"
    p.write_bytes(raw)
    assert inp.file_digest(inp.expand([str(p)])[0])[0] == len(raw)
    p.write_bytes(raw[:-2])  # ends inside the character
    with pytest.raises(PrepareError, match=rf"byte offset {(1 << 22) - 1} is not valid UTF-8"):
        inp.file_digest(inp.expand([str(p)])[0])


def test_bad_utf8_in_jsonl_and_gz(tmp_path):
    lines = [b'{"text": "fine"}\n', b'{"text": "also fine"}\n', b'{"text": "caf\xe9"}\n']
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"".join(lines))
    offset = len(lines[0]) + len(lines[1]) + lines[2].index(b"\xe9")
    with pytest.raises(PrepareError, match=rf"x.jsonl: byte offset {offset} is not valid UTF-8"):
        inp.file_digest(inp.expand([str(p)])[0])
    g = tmp_path / "x.jsonl.gz"
    g.write_bytes(gzip.compress(b"".join(lines)))
    with pytest.raises(PrepareError, match=rf"x.jsonl.gz: byte offset {offset} of the decompressed data"):
        docs(g)


def test_jsonl_record_without_the_field(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(PrepareError, match=r"line 2 \(byte offset 14\) has no text field 'text'.*--field"):
        docs(p)
    # The field must be in every record: line 1 lacks "body".
    with pytest.raises(PrepareError, match="line 1"):
        docs(p, "body")


def test_cli_bad_utf8_exits_2_with_one_line_and_writes_nothing(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok text\n\xc3(")
    out = tmp_path / "out"
    r = cli("prepare", p, "--out", out, "--bytes")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.txt: byte offset 8 is not valid UTF-8" in lines[0], r.stderr
    assert not out.exists()
