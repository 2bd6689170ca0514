"""A minimal reader of TensorBoard event files (tensorboardX writes them, but has no reader).

Record framing (TFRecord): uint64 length, uint32 masked CRC32C of the length,
`length` bytes of a serialized `Event` proto, uint32 masked CRC32C of the data.
CRCs are checked so a truncated or corrupt file is noticed.
"""
from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def _crc32c_table():
    poly, table = 0x82F63B78, []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: Path):
    raw = Path(path).read_bytes()
    pos = 0
    while pos < len(raw):
        header = raw[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", raw[pos + 8 : pos + 12])
        assert hcrc == masked_crc(header), f"{path}: bad length CRC at byte {pos}"
        data = raw[pos + 12 : pos + 12 + length]
        (dcrc,) = struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])
        assert dcrc == masked_crc(data), f"{path}: bad data CRC at byte {pos}"
        ev = event_pb2.Event()
        ev.ParseFromString(data)
        yield ev
        pos += 16 + length


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} over every events file under logdir (later files win)."""
    out: dict[str, dict[int, float]] = {}
    for f in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for ev in read_events(f):
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[int(ev.step)] = float(v.simple_value)
    return out
