"""The envelope: a fixed binary header around a codec's payload (spec: docs/format.md).

::

    offset size  field
    0      2     magic b"cL"
    2      1     format version (1 unsigned, 2 signed: the MAC covers the store key)
    3      1     codec id (1 JSON, 2 msgpack, 3 pickle)
    4      1     flags (bit 0 zstd, bit 1 signed, bit 2 negative entry, bit 3 tagged JSON,
                 bit 4 tag section present)
    5      1     reserved, 0
    6      4     load duration in ms (uint32, big-endian), for early refresh
    10     8     written at, ms since the Unix epoch (uint64)
    18     8     fresh until, ms since the Unix epoch (uint64, 0 = no expiry)
    26     t     tag section when bit 4 is set: count (uint8), then per tag: key length
                 (uint16), key (UTF-8), token length (uint8), token
    26+t   n     payload (zstd-compressed when bit 0 is set)
    26+t+n 32    HMAC-SHA256 of the store key (length-prefixed) and every byte before
                 it, when bit 1 is set

Decoding checks every field and raises :class:`~cachelayer.errors.DecodeError` on
anything it does not understand or that is over its size limit, so the Cache can treat
it as a miss.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from collections.abc import Sequence
from typing import Any

from ._codecs import (
    CODEC_PICKLE,
    FLAG_TAGGED,
    Codec,
    JsonCodec,
    MsgpackCodec,
    PickleCodec,
    TypeRegistry,
)
from .errors import ConfigurationError, DecodeError, ValueTooLarge

__all__ = ["Entry", "Serializer"]

MAGIC = b"cL"
#: unsigned envelopes keep version 1 (their bytes did not change); signed ones are 2, whose
#: MAC covers the store key. A version 1 signed envelope is refused: its MAC does not say
#: which key it was written for, so it could have been copied from any other key.
VERSION = 1
VERSION_SIGNED = 2
FLAG_ZSTD = 0x01
FLAG_SIGNED = 0x02
FLAG_NEGATIVE = 0x04
FLAG_TAGS = 0x10
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_SIGNED | FLAG_NEGATIVE | FLAG_TAGGED | FLAG_TAGS
_HEADER = struct.Struct(">2sBBBBIQQ")
HEADER_SIZE = _HEADER.size  # 26
MAC_SIZE = 32
_MAX_DURATION_MS = 2**32 - 1
#: The default limit on a payload's size (decompressed): see docs/values.md, "Limits".
#: Decoded Python objects take 3 to 70 times their payload bytes (a msgpack array of empty
#: arrays: 72 bytes of list per byte), so this also bounds what one forged entry can make
#: a reader build: ~0.6 GiB at worst for 8 MiB, against 36 GiB for Redis's 512 MB.
DEFAULT_MAX_VALUE_SIZE = 8 * 1024 * 1024


class Entry:
    """A decoded envelope."""

    __slots__ = ("duration_ms", "fresh_until_ms", "negative", "raw", "tags", "value", "written_ms")

    def __init__(
        self,
        value: Any,
        negative: bool,
        duration_ms: int,
        written_ms: int,
        fresh_until_ms: int,
        tags: list[tuple[str, bytes]],
        raw: bytes,
    ) -> None:
        self.value = value
        self.negative = negative
        self.duration_ms = duration_ms
        self.written_ms = written_ms
        self.fresh_until_ms = fresh_until_ms
        #: (tag key, token) pairs the entry was computed under; it is valid only while
        #: every tag key still holds its token.
        self.tags = tags
        #: the envelope bytes this entry was decoded from
        self.raw = raw


def _pack_tags(tags: Sequence[tuple[str, bytes]]) -> bytes:
    if len(tags) > 255:
        raise ValueError(f"an entry can carry at most 255 tags, not {len(tags)}")
    out = [bytes((len(tags),))]
    for key, token in tags:
        raw_key = key.encode("utf-8", "surrogatepass")
        if len(raw_key) > 65535 or len(token) > 255:
            raise ValueError("tag key or token too long")
        out += (len(raw_key).to_bytes(2, "big"), raw_key, bytes((len(token),)), token)
    return b"".join(out)


def _unpack_tags(body: bytes) -> tuple[list[tuple[str, bytes]], int]:
    """Parse the tag section at HEADER_SIZE; return the tags and where the payload starts."""
    pos = HEADER_SIZE
    count = body[pos]
    pos += 1
    tags = []
    for _ in range(count):
        klen = int.from_bytes(body[pos : pos + 2], "big")
        key = body[pos + 2 : pos + 2 + klen].decode("utf-8", "surrogatepass")
        pos += 2 + klen
        tlen = body[pos]
        token = body[pos + 1 : pos + 1 + tlen]
        if len(token) != tlen:
            raise DecodeError("tag section is truncated")
        tags.append((key, token))
        pos += 1 + tlen
    return tags, pos


def _mac(secret: bytes, key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of the store key (uint32 length, then UTF-8) and the envelope body."""
    mac = hmac.new(secret, len(key).to_bytes(4, "big"), hashlib.sha256)
    mac.update(key)
    mac.update(body)
    return mac.digest()


def _store_key(key: str | None) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"a signed entry needs its store key (a str), not {key!r}")
    return key.encode("utf-8", "surrogatepass")


def _as_key(key: bytes | str) -> bytes:
    if isinstance(key, str):
        raw = key.encode()
    elif isinstance(key, bytes):
        raw = key
    else:
        # bytes(int) would silently build an all-zero key (a bytearray key iterates as ints)
        raise ConfigurationError(
            f"signing_key must be bytes or str (or a sequence of them), not {type(key).__name__}"
        )
    if len(raw) < 16:
        raise ConfigurationError("signing_key must be at least 16 bytes long")
    return raw


class Serializer:
    """Values <-> envelope bytes: codec, optional zstd, optional HMAC signature.

    Args:
        codec: ``"json"`` (default), ``"msgpack"`` or ``"pickle"`` (needs a signing key).
        compress_threshold: payloads of at least this many bytes are zstd-compressed when
            that makes them smaller; ``None`` turns compression off.
        signing_key: a secret (>= 16 bytes), or a sequence of secrets where the first
            signs and all verify (key rotation). With a key, every entry is signed and
            unsigned or badly signed entries are refused.
        registry: user types the codecs may store.
        max_value_size: the largest payload (decompressed) written or read, in bytes. A
            larger stored payload is refused before it is decompressed or decoded.

    The store key an entry is written under is part of its signature: a signed entry
    read under any other key does not verify. Unsigned entries are not bound to a key.
    """

    def __init__(
        self,
        codec: str = "json",
        *,
        compress_threshold: int | None = 1024,
        compress_level: int = 3,
        signing_key: bytes | str | Sequence[bytes | str] | None = None,
        registry: TypeRegistry | None = None,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    ) -> None:
        self.registry = registry or TypeRegistry()
        if isinstance(max_value_size, bool) or not isinstance(max_value_size, int):
            raise ConfigurationError(f"max_value_size={max_value_size!r} must be an int")
        if max_value_size < 1:
            raise ConfigurationError(f"max_value_size={max_value_size!r} must be >= 1")
        self.max_value_size = max_value_size
        if signing_key is None:
            self._keys: list[bytes] = []
        elif isinstance(signing_key, (bytes, str)):
            self._keys = [_as_key(signing_key)]
        else:
            self._keys = [_as_key(k) for k in signing_key]
            if not self._keys:
                raise ConfigurationError("signing_key is an empty sequence")
        decoders: dict[int, Codec] = {
            1: JsonCodec(self.registry),
            2: MsgpackCodec(self.registry),
        }
        if codec == "pickle":
            # Only a Cache that writes pickle reads it: a JSON or msgpack Cache that shares
            # a signing key with a pickle one must not run what that one stored.
            decoders[CODEC_PICKLE] = PickleCodec()
        choices = {"json": 1, "msgpack": 2, "pickle": CODEC_PICKLE}
        if codec not in choices:
            raise ConfigurationError(
                f"unknown codec {codec!r}; choose one of {', '.join(sorted(choices))}"
            )
        if codec == "pickle" and not self._keys:
            raise ConfigurationError(
                "codec='pickle' needs a signing_key: unsigned pickle in a shared store lets "
                "anyone who can write to it run code in your processes"
            )
        self.codec_name = codec
        self._encoder = decoders[choices[codec]]
        self._decoders = decoders
        if compress_threshold is not None and compress_threshold < 0:
            raise ConfigurationError("compress_threshold must be >= 0 or None")
        self._threshold = compress_threshold
        self._level = compress_level
        self._local = threading.local()

    # -- zstd: compressor objects are not thread-safe, so one per thread ------------------

    def _zstd(self) -> Any:
        z = getattr(self._local, "z", None)
        if z is None:
            import zstandard

            z = self._local.z = (
                zstandard.ZstdCompressor(level=self._level),
                zstandard.ZstdDecompressor(),
                zstandard,
            )
        return z

    def dumps(
        self,
        value: Any,
        *,
        written_ms: int,
        fresh_until_ms: int,
        duration_ms: int = 0,
        negative: bool = False,
        tags: Sequence[tuple[str, bytes]] = (),
        key: str | None = None,
    ) -> bytes:
        """Encode ``value`` into envelope bytes, for the store key ``key``.

        ``key`` (the full store key: namespace and version included) is required when the
        entry is signed; an unsigned entry does not depend on it.

        Raises:
            TypeError: the value (or something inside it) has an unsupported type, or a
                signed entry has no ``key``.
            ValueTooLarge: the payload is larger than ``max_value_size`` (no reader would
                accept it).
        """
        store_key = _store_key(key) if self._keys else b""
        payload, flags = self._encoder.encode(value)
        if len(payload) > self.max_value_size:
            raise ValueTooLarge(
                f"cachelayer cannot store a value of {len(payload)} bytes encoded: the "
                f"limit is max_value_size={self.max_value_size}"
            )
        if negative:
            flags |= FLAG_NEGATIVE
        if self._threshold is not None and len(payload) >= self._threshold:
            packed = self._zstd()[0].compress(payload)
            if len(packed) < len(payload):
                payload = packed
                flags |= FLAG_ZSTD
        if self._keys:
            flags |= FLAG_SIGNED
        if tags:
            flags |= FLAG_TAGS
        head = _HEADER.pack(
            MAGIC,
            VERSION_SIGNED if self._keys else VERSION,
            self._encoder.codec_id,
            flags,
            0,
            min(max(duration_ms, 0), _MAX_DURATION_MS),
            written_ms,
            fresh_until_ms,
        )
        if tags:
            head += _pack_tags(tags)
        if not self._keys:
            return head + payload
        body = head + payload
        return body + _mac(self._keys[0], store_key, body)

    def loads(self, raw: bytes, *, key: str | None = None) -> Entry:
        """Decode envelope bytes read from the store key ``key``.

        ``key`` is required when this Serializer verifies signatures: a signed entry
        verifies only under the key it was written for.

        Raises:
            DecodeError: the bytes are not a valid envelope this Serializer may read for
                ``key``, or its payload is over ``max_value_size``.
            TypeError: this Serializer verifies signatures and ``key`` is not a str.
        """
        store_key = _store_key(key) if self._keys else b""
        try:
            magic, version, codec_id, flags, reserved, duration, written, fresh = (
                _HEADER.unpack_from(raw)
            )
        except struct.error:
            raise DecodeError(f"{len(raw)} bytes are too short for an envelope") from None
        if not flags and not reserved and version == VERSION and magic == MAGIC:
            # The common entry (unsigned, untagged, uncompressed, positive): what the
            # checks below would conclude, in fewer steps (every hit decodes one).
            codec = self._decoders.get(codec_id)
            if (
                codec is not None
                and not self._keys
                and len(raw) - HEADER_SIZE <= self.max_value_size
            ):
                try:
                    value = codec.decode(raw[HEADER_SIZE:], 0)
                except Exception as exc:
                    raise DecodeError(f"payload does not decode: {type(exc).__name__}") from exc
                return Entry(value, False, duration, written, fresh, [], raw)
        if magic != MAGIC:
            raise DecodeError("not a cachelayer envelope (bad magic)")
        if version != VERSION and version != VERSION_SIGNED:
            raise DecodeError(f"envelope format version {version} is not supported")
        if flags & ~_KNOWN_FLAGS:
            raise DecodeError(f"envelope has unknown flags {flags:#04x}")
        if reserved:
            raise DecodeError(f"envelope reserved byte is {reserved}, not 0")
        if bool(flags & FLAG_SIGNED) != (version == VERSION_SIGNED):
            raise DecodeError(
                f"envelope version {version} with flags {flags:#04x}: a signed envelope "
                "is version 2 (its MAC covers the store key), an unsigned one version 1"
            )
        if flags & FLAG_SIGNED:
            if not self._keys:
                raise DecodeError("signed envelope, but this Cache has no signing_key")
            body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
            if len(body) < HEADER_SIZE or not any(
                hmac.compare_digest(_mac(k, store_key, body), mac) for k in self._keys
            ):
                raise DecodeError("envelope signature does not verify for this key")
        elif self._keys:
            raise DecodeError("unsigned envelope, but this Cache requires signatures")
        else:
            body = raw
        tags: list[tuple[str, bytes]] = []
        start = HEADER_SIZE
        if flags & FLAG_TAGS:
            try:
                tags, start = _unpack_tags(body)
            except (IndexError, UnicodeDecodeError):
                raise DecodeError("tag section does not parse") from None
            if start > len(body):
                raise DecodeError("tag section is truncated")
        payload = body[start:] if start < len(body) else b""
        codec = self._decoders.get(codec_id)
        if codec is None:
            raise DecodeError(f"codec id {codec_id} is unknown or not enabled here")
        limit = self.max_value_size
        if len(payload) > limit:
            raise DecodeError(f"payload of {len(payload)} bytes is over max_value_size={limit}")
        try:
            if flags & FLAG_ZSTD:
                zstandard = self._zstd()[2]
                size = zstandard.frame_content_size(payload)
                if size < 0 or size > limit:
                    raise DecodeError(
                        f"compressed payload declares {size} bytes (max_value_size={limit})"
                    )
                # Decompressed into a buffer of the declared size: a frame that holds more
                # fails when the buffer is full, so no more than `limit` is ever written.
                payload = self._zstd()[1].decompress(
                    payload, max_output_size=limit, allow_extra_data=False
                )
            value = codec.decode(payload, flags)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"payload does not decode: {type(exc).__name__}") from exc
        return Entry(value, bool(flags & FLAG_NEGATIVE), duration, written, fresh, tags, raw)
