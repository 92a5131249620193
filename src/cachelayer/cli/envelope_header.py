"""Reading an envelope's header and payload the way another language would (docs/format.md).

The profiler looks at stored values without decoding them: it only needs the codec, the
flags and, for the compression estimate, the payload bytes. Written from the spec rather
than from the Serializer, so it also tells which keys a foreign writer left under a
cachelayer-looking name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["HEADER_SIZE", "Header", "parse_header", "payload_of"]

HEADER_SIZE = 26
_HEADER = struct.Struct(">2sBBBBIQQ")
_MAC_SIZE = 32
_CODECS = {1: "json", 2: "msgpack", 3: "pickle"}
_FLAGS = ((0x01, "zstd"), (0x02, "signed"), (0x04, "negative"), (0x08, "tagged"), (0x10, "tags"))


@dataclass(frozen=True)
class Header:
    """The parts of an envelope header the profile reports."""

    codec: str
    flags: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & 0x01)

    def flag_names(self) -> list[str]:
        return [name for mask, name in _FLAGS if self.flags & mask]


def parse_header(raw: bytes) -> Header | None:
    """The header of ``raw`` (at least its first 26 bytes), or None when it is not one."""
    if len(raw) < HEADER_SIZE:
        return None
    magic, version, codec_id, flags, reserved, _, _, _ = _HEADER.unpack_from(raw)
    if magic != b"cL" or version not in (1, 2) or reserved or flags & 0xE0:
        return None
    codec = _CODECS.get(codec_id)
    return None if codec is None else Header(codec, flags)


def payload_of(raw: bytes) -> bytes | None:
    """The payload bytes of a whole envelope (no tag section, no MAC), or None."""
    header = parse_header(raw)
    if header is None:
        return None
    pos = HEADER_SIZE
    if header.flags & 0x10:
        if pos >= len(raw):
            return None
        count = raw[pos]
        pos += 1
        for _ in range(count):
            if pos + 2 > len(raw):
                return None
            pos += 2 + int.from_bytes(raw[pos : pos + 2], "big")
            if pos >= len(raw):
                return None
            pos += 1 + raw[pos]
    end = len(raw) - _MAC_SIZE if header.flags & 0x02 else len(raw)
    return raw[pos:end] if pos <= end else None
