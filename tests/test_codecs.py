"""Value codecs and the envelope: exact round trips, refusals, corruption and signing.

Everything here runs in process against ``cachelayer._envelope.Serializer``; no store.
The wire format these tests pin is specified in docs/format.md.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import io
import math
import pickle
import struct
import threading
import zoneinfo
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgpack
import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cachelayer._codecs import FLAG_TAGGED, TypeRegistry
from cachelayer._envelope import (
    FLAG_NEGATIVE,
    FLAG_SIGNED,
    FLAG_ZSTD,
    HEADER_SIZE,
    MAC_SIZE,
    Serializer,
)
from cachelayer.errors import ConfigurationError, DecodeError

CODECS = ["json", "msgpack"]
KEY_OLD = b"old-secret-0123456789abcdef"
KEY_NEW = b"new-secret-0123456789abcdef"
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
HEADER = struct.Struct(">2sBBBBIQQ")

SERIALIZERS = {codec: Serializer(codec) for codec in CODECS}
#: the store key entries are written for and read from (signed ones are bound to it)
K = "t:v1:k"


def dumps(ser: Serializer, value: Any, **fields: Any) -> bytes:
    fields.setdefault("written_ms", 1_700_000_000_000)
    fields.setdefault("fresh_until_ms", 1_700_000_300_000)
    fields.setdefault("key", K)
    return ser.dumps(value, **fields)


def round_trip(ser: Serializer, value: Any) -> Any:
    return ser.loads(dumps(ser, value), key=K).value


def canon(value: Any) -> Any:
    """A hashable, type-exact form of ``value``: equal iff the two values are the same.

    Types are compared exactly at every level (``1``, ``True`` and ``1.0`` differ), floats
    by ``repr`` (so ``nan`` equals ``nan`` and ``-0.0`` differs from ``0.0``), Decimals by
    their digits and exponent, datetimes and times by wall time, fold and tzinfo, dicts by
    their items in order.
    """
    t = type(value)
    if t is float:
        return (t, repr(value))
    if t is Decimal:
        return (t, str(value))
    if t is list or t is tuple:
        return (t, tuple(canon(v) for v in value))
    if t is dict:
        return (t, tuple((canon(k), canon(v)) for k, v in value.items()))
    if t is set or t is frozenset:
        return (t, frozenset(canon(v) for v in value))
    if t is dt.datetime or t is dt.time:
        naive = value.replace(tzinfo=None, fold=0).isoformat()
        tz = value.tzinfo
        return (t, naive, value.fold, None if tz is None else (type(tz), repr(tz)))
    if dataclasses.is_dataclass(value):
        return (t, tuple(canon(getattr(value, f.name)) for f in dataclasses.fields(value)))
    return (t, value)


def assert_same(got: Any, expected: Any) -> None:
    assert canon(got) == canon(expected), f"{got!r} != {expected!r}"


# -- strategies -------------------------------------------------------------------------

BOUNDARY_INTS = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**40, -(10**40)]
ints = st.integers() | st.integers(-(2**200), 2**200) | st.sampled_from(BOUNDARY_INTS)
floats = st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324])
offsets = st.timedeltas(
    min_value=dt.timedelta(hours=-23, minutes=-59, seconds=-59),
    max_value=dt.timedelta(hours=23, minutes=59, seconds=59),
)
tzinfos = st.one_of(
    st.none(),
    st.just(dt.timezone.utc),
    st.builds(dt.timezone, offsets),
    st.builds(dt.timezone, offsets, st.text(min_size=1, max_size=8)),
    st.just(PARIS),
    st.timezones(),
)
folds = st.integers(0, 1)
datetimes = st.builds(
    lambda d, tz, fold: d.replace(tzinfo=tz, fold=fold), st.datetimes(), tzinfos, folds
) | st.builds(
    # the ambiguous hour of the 2023 autumn change in Paris, both folds
    lambda minute, fold: dt.datetime(2023, 10, 29, 2, minute, tzinfo=PARIS, fold=fold),
    st.integers(0, 59),
    folds,
)
times = st.builds(lambda t, tz, fold: t.replace(tzinfo=tz, fold=fold), st.times(), tzinfos, folds)
decimals = st.decimals() | st.sampled_from(
    [Decimal(s) for s in ["-0", "0E+3", "1E+5", "1.000", "-1.5E-10", "NaN", "-NaN", "NaN123"]]
    + [Decimal(s) for s in ["sNaN", "-sNaN", "Infinity", "-Infinity", "123456789.987654321"]]
)
hashable_atoms = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    st.text(),
    st.binary(),
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False),  # Decimal("sNaN") cannot be hashed
)
hashables = st.recursive(
    hashable_atoms,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
atoms = hashable_atoms | decimals


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.dictionaries(st.text(), inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.fixed_dictionaries({"$cl": inner}),
        st.fixed_dictionaries({"$cl": inner}, optional={"other": inner}),
    )


values = st.recursive(atoms, containers, max_leaves=12)

plain_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text().filter(lambda k: k != "$cl"), inner, max_size=4)
    ),
    max_leaves=12,
)


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@given(value=values)
def test_round_trip_preserves_types_and_values(codec: str, value: Any) -> None:
    """Every supported value comes back with the same types and values, recursively."""
    assert_same(round_trip(SERIALIZERS[codec], value), value)


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=50)
@given(value=values)
def test_round_trip_through_compression_and_signing(codec: str, value: Any) -> None:
    """Compressing every payload and signing every entry changes nothing that comes back."""
    ser = Serializer(codec, compress_threshold=0, signing_key=KEY_NEW)
    assert_same(round_trip(ser, value), value)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "value",
    [
        2**63,
        -(2**63) - 1,
        10**100,
        -0.0,
        math.inf,
        Decimal("-0"),
        Decimal("1.2300E+7"),
        Decimal("sNaN42"),
        dt.datetime(2023, 10, 29, 2, 30, tzinfo=PARIS, fold=1),
        dt.datetime(2023, 10, 29, 2, 30, tzinfo=PARIS, fold=0),
        dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")),
        dt.datetime(2020, 1, 1, fold=1),
        dt.time(12, 0, tzinfo=dt.timezone(-dt.timedelta(microseconds=1))),
        dt.timedelta(days=-1, microseconds=1),
        UUID(int=0),
        b"\x00\xff",
        {"$cl": ["tuple", [1]]},
        {"$cl": 1, "x": (2,)},
        [{"$cl": None}],
        {(1, "a"): frozenset({2}), None: {3}, 1.5: [], b"k": ()},
        {True: "bool", 2: "int", 0.5: "float"},
        {frozenset(): set()},
        ("", (), [], {}, set(), frozenset()),
    ],
    ids=repr,
)
def test_round_trip_of_edge_values(codec: str, value: Any) -> None:
    """Values at the edges of each type (big ints, -0, folds, tag look-alikes) come back exact."""
    assert_same(round_trip(SERIALIZERS[codec], value), value)


def test_nan_round_trips_as_nan() -> None:
    """A NaN float comes back as a NaN float from both codecs."""
    for codec in CODECS:
        back = round_trip(SERIALIZERS[codec], [math.nan])[0]
        assert type(back) is float
        assert math.isnan(back)


def test_zoneinfo_comes_back_as_the_same_zone() -> None:
    """A ZoneInfo datetime comes back with a ZoneInfo of the same key, not a fixed offset."""
    when = dt.datetime(2024, 7, 1, 12, 0, tzinfo=PARIS)
    for codec in CODECS:
        back = round_trip(SERIALIZERS[codec], when)
        assert isinstance(back.tzinfo, zoneinfo.ZoneInfo)
        assert back.tzinfo.key == "Europe/Paris"
        assert back.utcoffset() == dt.timedelta(hours=2)


@pytest.mark.parametrize("codec", CODECS)
def test_lone_surrogate_is_refused_at_encode_time(codec: str) -> None:
    """A str with a lone surrogate is refused at encode: TypeError (json), ValueError (msgpack)."""
    expected = TypeError if codec == "json" else UnicodeEncodeError
    with pytest.raises(expected, match="surrogates not allowed"):
        dumps(SERIALIZERS[codec], {"name": "a\ud800b"})


# -- the plain JSON fast path -----------------------------------------------------------


def test_plain_json_document_is_stored_untagged() -> None:
    """A profile-like dict is stored as plain JSON with the tagged flag clear."""
    profile = {
        "id": 42,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "tags": ["admin", "beta"],
        "score": 98.5,
        "active": True,
        "manager": None,
        "address": {"city": "London", "zip": "NW1"},
    }
    raw = dumps(SERIALIZERS["json"], profile)
    assert raw[4] & FLAG_TAGGED == 0
    assert raw[HEADER_SIZE:] == orjson.dumps(profile)
    assert_same(SERIALIZERS["json"].loads(raw, key=K).value, profile)


def test_tuple_inside_sets_the_tagged_flag() -> None:
    """One tuple anywhere in the value sets the tagged flag so the reader walks the tree."""
    raw = dumps(SERIALIZERS["json"], {"id": 42, "tags": ["a", {"pos": (1, 2)}]})
    assert raw[4] & FLAG_TAGGED == FLAG_TAGGED


def test_untagged_payload_is_not_walked() -> None:
    """With the tagged flag clear, a tag-shaped object in the JSON is returned as a dict."""
    tagged = dumps(SERIALIZERS["json"], (1, 2))
    untagged = tagged[:4] + bytes([tagged[4] & ~FLAG_TAGGED]) + tagged[5:]
    assert SERIALIZERS["json"].loads(tagged, key=K).value == (1, 2)
    assert SERIALIZERS["json"].loads(untagged, key=K).value == {"$cl": ["tuple", [1, 2]]}


@given(doc=plain_json)
def test_plain_json_documents_never_set_the_tagged_flag(doc: Any) -> None:
    """Any plain JSON document is stored byte-for-byte as orjson writes it, flag clear."""
    raw = dumps(Serializer("json", compress_threshold=None), doc)
    assert raw[4] & FLAG_TAGGED == 0
    assert raw[HEADER_SIZE:] == orjson.dumps(doc)


# -- corrupt, truncated and foreign bytes -----------------------------------------------

ALL_READERS = [
    Serializer("json"),
    Serializer("msgpack"),
    Serializer("json", signing_key=KEY_NEW),
    Serializer("pickle", signing_key=KEY_NEW),
]


@given(raw=st.binary(max_size=200))
def test_random_bytes_raise_decode_error(raw: bytes) -> None:
    """Arbitrary bytes that do not start like an envelope raise DecodeError, nothing else."""
    if raw.startswith(b"cL\x01"):
        raw = b"x" + raw
    for ser in ALL_READERS:
        with pytest.raises(DecodeError):
            ser.loads(raw, key=K)


@given(
    codec_id=st.integers(0, 255) | st.sampled_from([1, 2, 3]),
    flags=st.integers(0, 255) | st.sampled_from([0, FLAG_ZSTD, FLAG_TAGGED, FLAG_SIGNED]),
    payload=st.binary(max_size=120),
)
def test_random_payload_behind_a_valid_header_raises_only_decode_error(
    codec_id: int, flags: int, payload: bytes
) -> None:
    """Garbage after a well-formed header either decodes to a value or raises DecodeError."""
    raw = HEADER.pack(b"cL", 1, codec_id, flags, 0, 5, 1, 2) + payload
    for ser in ALL_READERS:
        try:
            entry = ser.loads(raw, key=K)
        except DecodeError:
            continue
        assert entry.written_ms == 1


TRUNCATION_CASES = [
    ("json", {}),
    ("msgpack", {}),
    ("json", {"compress_threshold": 0}),
    ("msgpack", {"compress_threshold": 0}),
    ("json", {"signing_key": KEY_NEW}),
    ("pickle", {"signing_key": KEY_NEW}),
]


@pytest.mark.parametrize(("codec", "options"), TRUNCATION_CASES)
def test_truncated_envelope_raises_decode_error(codec: str, options: dict[str, Any]) -> None:
    """A valid envelope cut at any length short of its end raises DecodeError."""
    ser = Serializer(codec, **options)
    raw = dumps(ser, {"user": [1, 2.5, "x" * 40, (3, None)], "ok": True})
    assert_same(ser.loads(raw, key=K).value, {"user": [1, 2.5, "x" * 40, (3, None)], "ok": True})
    for length in range(len(raw)):
        with pytest.raises(DecodeError):
            ser.loads(raw[:length], key=K)


@pytest.mark.parametrize("codec", [*CODECS, "pickle"])
def test_any_flipped_bit_in_a_signed_envelope_raises_decode_error(codec: str) -> None:
    """Changing any bit of a signed envelope (header, payload or MAC) makes it a DecodeError."""
    ser = Serializer(codec, signing_key=KEY_NEW)
    raw = dumps(ser, ["profile", 42, {"a": (1, 2)}])
    for pos in range(len(raw)):
        for bit in (0x01, 0x80):
            forged = raw[:pos] + bytes([raw[pos] ^ bit]) + raw[pos + 1 :]
            with pytest.raises(DecodeError):
                ser.loads(forged, key=K)


def _patch(raw: bytes, offset: int, byte: int) -> bytes:
    return raw[:offset] + bytes([byte]) + raw[offset + 1 :]


@pytest.mark.parametrize(
    ("offset", "byte", "message"),
    [
        (0, ord("C"), "bad magic"),
        (1, ord("l"), "bad magic"),
        (2, 2, "version 2"),
        (2, 0, "version 0"),
        (3, 0, "codec id 0"),
        (3, 4, "codec id 4"),
        (3, 255, "codec id 255"),
        (3, 3, "codec id 3"),
        (4, 0x20, "unknown flags"),
        (4, 0x80, "unknown flags"),
        (5, 1, "reserved"),
    ],
)
def test_header_fields_a_reader_does_not_understand_raise_decode_error(
    offset: int, byte: int, message: str
) -> None:
    """Wrong magic, another version, unknown codec id or flag bits, non-zero reserved: refused."""
    raw = _patch(dumps(SERIALIZERS["json"], [1, 2]), offset, byte)
    with pytest.raises(DecodeError, match=message):
        SERIALIZERS["json"].loads(raw, key=K)


def test_trailing_bytes_after_a_json_payload_raise_decode_error() -> None:
    """A payload with bytes after the JSON document is refused."""
    raw = dumps(SERIALIZERS["json"], {"a": 1})
    with pytest.raises(DecodeError):
        SERIALIZERS["json"].loads(raw + b" x", key=K)


def test_msgpack_timestamp_extension_from_a_foreign_writer() -> None:
    """msgpack's own timestamp extension (-1), which cachelayer never writes, decodes to a
    msgpack.Timestamp (documented in values.md): the bytes parse, so they are a value."""
    raw = HEADER.pack(b"cL", 1, 2, 0, 0, 0, 0, 0) + msgpack.packb(msgpack.Timestamp(1, 0))
    assert SERIALIZERS["msgpack"].loads(raw, key=K).value == msgpack.Timestamp(1, 0)


@pytest.mark.parametrize("code", [0, 6, 42, 126, -5, -128])
def test_unknown_msgpack_extension_raises_decode_error(code: int) -> None:
    """A msgpack extension code cachelayer does not define makes the entry a DecodeError."""
    ext = b"\xd4" + struct.pack(">b", code) + b"\x90"  # fixext 1: type, one data byte
    raw = HEADER.pack(b"cL", 1, 2, 0, 0, 0, 0, 0) + ext
    with pytest.raises(DecodeError):
        SERIALIZERS["msgpack"].loads(raw, key=K)


@pytest.mark.parametrize(
    "tree",
    [
        {"$cl": ["nope", 1]},
        {"$cl": ["x", "unregistered.Name", {}]},
        {"$cl": ["bytes", "not base64!"]},
        {"$cl": ["int", "1.5"]},
        {"$cl": ["dt", ["2020-01-01T00:00:00", ["zone", "No/Such_Zone"], 0]]},
        {"$cl": []},
    ],
    ids=repr,
)
def test_malformed_json_tags_raise_decode_error(tree: Any) -> None:
    """A tagged JSON payload with an unknown tag or malformed tag data is a DecodeError."""
    raw = HEADER.pack(b"cL", 1, 1, FLAG_TAGGED, 0, 0, 0, 0) + orjson.dumps(tree)
    with pytest.raises(DecodeError):
        SERIALIZERS["json"].loads(raw, key=K)


def _nested_tuples(depth: int) -> Any:
    value: Any = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def _run_with_small_stack(func: Any) -> list[Any]:
    """Run ``func`` in a thread with a 512 KiB stack (macOS's default for threads)."""
    results: list[Any] = []

    def target() -> None:
        try:
            results.append(func())
        except Exception as exc:
            results.append(exc)

    old = threading.stack_size(512 * 1024)
    try:
        thread = threading.Thread(target=target)
        thread.start()
    finally:
        threading.stack_size(old)
    thread.join()
    return results


def test_msgpack_decodes_deeply_nested_tuples_on_a_small_thread_stack() -> None:
    """100 nested tuples decode in a 512 KiB-stack thread (nested unpackb once crashed at ~16)."""
    ser = SERIALIZERS["msgpack"]
    value = _nested_tuples(100)
    raw = dumps(ser, value)
    [back] = _run_with_small_stack(lambda: ser.loads(raw, key=K).value)
    assert back == value


def test_msgpack_refuses_nesting_beyond_the_limit() -> None:
    """101 nested tuples raise TypeError at encode; forged deeper bytes are a DecodeError."""
    with pytest.raises(TypeError, match="nested more than 100"):
        dumps(SERIALIZERS["msgpack"], _nested_tuples(101))
    forged = msgpack.packb([])
    for _ in range(5000):
        forged = msgpack.packb(msgpack.ExtType(1, b"\x91" + forged))  # a 1-tuple of ...
    raw = HEADER.pack(b"cL", 1, 2, 0, 0, 0, 0, 0) + forged
    [error] = _run_with_small_stack(lambda: SERIALIZERS["msgpack"].loads(raw, key=K))
    assert isinstance(error, DecodeError)


def test_json_refuses_nesting_beyond_orjson_limit() -> None:
    """A value nested deeper than orjson's limit raises TypeError at encode time."""
    value: Any = []
    for _ in range(300):
        value = [value]
    with pytest.raises(TypeError, match="Recursion limit"):
        dumps(SERIALIZERS["json"], value)


# -- unsupported types ------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: float
    label: tuple[str, ...] = ()


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


class Opaque:
    pass


class CustomTz(dt.tzinfo):
    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=1)

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: dt.datetime | None) -> str:
        return "CUSTOM"


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (Point(1, 2.0), "Point"),
        (collections.defaultdict(lambda: 0), "defaultdict"),  # a factory it cannot name
        (Level.LOW, "Level"),
        (Name("ada"), "Name"),
        (Opaque(), "Opaque"),
        (1 + 2j, "complex"),
        (dt.datetime(2020, 1, 1, tzinfo=CustomTz()), "CustomTz"),
        (dt.time(1, 0, tzinfo=CustomTz()), "CustomTz"),
    ],
)
def test_unsupported_type_raises_type_error_naming_it(
    codec: str, value: Any, type_name: str
) -> None:
    """A value the codec cannot bring back exactly raises TypeError naming its type."""
    with pytest.raises(TypeError, match=type_name):
        dumps(SERIALIZERS[codec], value)
    with pytest.raises(TypeError, match=type_name):
        dumps(SERIALIZERS[codec], {"nested": [1, value]})


def test_zoneinfo_without_a_key_is_refused() -> None:
    """A ZoneInfo loaded from a file has no key to store, so it raises TypeError."""
    # a minimal TZif v1 file: no transitions, one type (UTC+1, "ABC")
    tzif = b"TZif" + bytes(16) + struct.pack(">6l", 0, 0, 0, 0, 1, 4) + b"\0\0\x0e\x10\0\0ABC\0"
    tz = zoneinfo.ZoneInfo.from_file(io.BytesIO(tzif))
    assert tz.key is None
    for codec in CODECS:
        with pytest.raises(TypeError, match="ZoneInfo"):
            dumps(SERIALIZERS[codec], dt.datetime(2020, 1, 1, tzinfo=tz))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "value",
    [
        bytearray(b"x"),
        memoryview(b"x"),
        [1, bytearray(b"x")],
        (bytearray(b"x"),),
        {"k": memoryview(b"x")},
        {memoryview(b"k"): 1},
        {memoryview(b"k")},
    ],
    ids=["bytearray", "memoryview", "in-list", "in-tuple", "dict-value", "dict-key", "in-set"],
)
def test_bytes_like_types_are_refused_not_stored_as_bytes(codec: str, value: Any) -> None:
    """bytearray and memoryview raise TypeError instead of coming back as bytes."""
    with pytest.raises(TypeError, match=r"bytearray|memoryview"):
        dumps(SERIALIZERS[codec], value)


# -- register_type ----------------------------------------------------------------------


class Money:
    __slots__ = ("amount", "currency")

    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is Money
            and (self.amount, self.currency) == (other.amount, other.currency)
            and str(self.amount) == str(other.amount)
        )

    __hash__ = None  # type: ignore[assignment]


def _registered_serializer(codec: str) -> Serializer:
    registry = TypeRegistry()
    registry.register(Point)
    registry.register(
        Money,
        name="shop.Money",
        dump=lambda m: [m.amount, m.currency],
        load=lambda d: Money(d[0], d[1]),
    )
    return Serializer(codec, registry=registry)


@pytest.mark.parametrize("codec", CODECS)
def test_registered_dataclass_round_trips_inside_a_list(codec: str) -> None:
    """A dataclass registered with default dump/load comes back as that dataclass."""
    ser = _registered_serializer(codec)
    value = [Point(1, 2.5, ("a", "b")), {"p": Point(-3, math.inf)}]
    back = ser.loads(dumps(ser, value), key=K).value
    assert type(back) is list
    assert type(back[0]) is Point
    assert type(back[0].label) is tuple
    assert_same(back, value)


@pytest.mark.parametrize("codec", CODECS)
def test_registered_class_with_dump_and_load_round_trips(codec: str) -> None:
    """A class registered with dump/load comes back through load, its Decimal exact."""
    ser = _registered_serializer(codec)
    back = ser.loads(dumps(ser, (Money(Decimal("9.90"), "EUR"),)), key=K).value
    assert type(back) is tuple
    assert back == (Money(Decimal("9.90"), "EUR"),)
    assert str(back[0].amount) == "9.90"


@pytest.mark.parametrize("codec", CODECS)
def test_unregistered_name_in_stored_bytes_raises_decode_error(codec: str) -> None:
    """A reader that has not registered the stored type name refuses the entry."""
    raw = dumps(_registered_serializer(codec), [Point(1, 2.0)])
    with pytest.raises(DecodeError):
        Serializer(codec).loads(raw, key=K)


def test_registering_a_taken_name_for_another_class_raises_value_error() -> None:
    """Two classes cannot share one stored name."""
    registry = TypeRegistry()
    registry.register(Point, name="geo.Point")
    registry.register(Point, name="geo.Point")  # the same class again is fine
    with pytest.raises(ValueError, match=r"geo\.Point"):
        registry.register(Money, name="geo.Point", dump=lambda m: [], load=lambda d: None)


def test_registering_a_plain_class_without_dump_and_load_raises_type_error() -> None:
    """A class that is not a dataclass needs explicit dump and load."""
    with pytest.raises(TypeError, match="dump= and load="):
        TypeRegistry().register(Money)


def test_registration_does_not_cover_subclasses() -> None:
    """A subclass of a registered dataclass is still refused with TypeError."""

    @dataclasses.dataclass
    class Point3(Point):
        z: int = 0

    with pytest.raises(TypeError, match="Point3"):
        dumps(_registered_serializer("json"), Point3(1, 2.0))


class Shape:
    """A family base: the registered dump records the concrete kind, load allows a few."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.size == self.size  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]


class Square(Shape):
    pass


class BigSquare(Square):
    pass


class Circle(Shape):
    pass


_SHAPES: dict[str, type[Shape]] = {"Shape": Shape, "Square": Square, "BigSquare": BigSquare}


def _load_shape(data: list[Any]) -> Shape:
    return _SHAPES[data[0]](data[1])  # Circle is not allowed: a KeyError, so a decode error


def _family_registry() -> TypeRegistry:
    registry = TypeRegistry()
    registry.register(
        Shape,
        name="geo.Shape",
        dump=lambda s: [type(s).__name__, s.size],
        load=_load_shape,
        subclasses=True,
    )
    return registry


@pytest.mark.parametrize("codec", CODECS)
def test_family_registration_covers_subclasses(codec: str) -> None:
    """register(..., subclasses=True) stores the base and every subclass under one name;
    load rebuilds each one as its own class."""
    ser = Serializer(codec, registry=_family_registry())
    value = [Shape(1), Square(2), (BigSquare(3),)]
    back = round_trip(ser, value)
    assert back == value
    assert [type(s) for s in back[:2]] == [Shape, Square]
    assert type(back[2][0]) is BigSquare


@pytest.mark.parametrize("codec", CODECS)
def test_family_load_decides_what_it_rebuilds(codec: str) -> None:
    """A subclass the family's load refuses is stored, but reading it is a decode error,
    never an object of some other class."""
    ser = Serializer(codec, registry=_family_registry())
    raw = dumps(ser, Circle(4))
    with pytest.raises(DecodeError):
        ser.loads(raw, key=K)


@pytest.mark.parametrize("codec", CODECS)
def test_exact_registration_takes_precedence_over_a_family(codec: str) -> None:
    """A class registered on its own uses its own dump/load, even inside a family; a
    subclass of it that is not registered falls back to the family."""
    registry = _family_registry()
    registry.register(Square, name="geo.Square", dump=lambda s: s.size, load=lambda n: Square(-n))
    ser = Serializer(codec, registry=registry)
    back = round_trip(ser, [Square(2), BigSquare(3)])
    assert back == [Square(-2), BigSquare(3)]


@pytest.mark.parametrize("codec", CODECS)
def test_nearest_family_in_the_mro_wins(codec: str) -> None:
    """With families at two levels, an instance uses the one nearest its class."""
    registry = _family_registry()
    registry.register(
        Square,
        name="geo.Square",
        dump=lambda s: [type(s).__name__, s.size * 10],
        load=lambda d: _SHAPES[d[0]](d[1]),
        subclasses=True,
    )
    ser = Serializer(codec, registry=registry)
    assert round_trip(ser, [Shape(1), BigSquare(3)]) == [Shape(1), BigSquare(30)]


def test_family_registration_needs_dump_and_load() -> None:
    """subclasses=True without dump/load raises TypeError (the dataclass defaults would
    rebuild the base class), and unrelated classes stay refused."""
    with pytest.raises(TypeError, match="subclasses=True"):
        TypeRegistry().register(Point, subclasses=True)
    with pytest.raises(TypeError, match="Money"):
        dumps(Serializer("json", registry=_family_registry()), Money(Decimal(1), "EUR"))


def test_reregistering_without_subclasses_ends_the_family() -> None:
    """Registering the family's class again without subclasses=True narrows it to the
    class itself: subclasses are refused again."""
    registry = _family_registry()
    ser = Serializer("json", registry=registry)
    assert round_trip(ser, Square(1)) == Square(1)
    registry.register(Shape, name="geo.Shape", dump=lambda s: ["Shape", s.size], load=_load_shape)
    with pytest.raises(TypeError, match="Square"):
        dumps(ser, Square(1))
    assert round_trip(ser, Shape(5)) == Shape(5)


# -- compression ------------------------------------------------------------------------

BIG = {"rows": [{"id": i, "name": f"user number {i}", "tags": ["a", "b"]} for i in range(200)]}


@pytest.mark.parametrize("codec", CODECS)
def test_payload_above_threshold_is_compressed_and_smaller(codec: str) -> None:
    """A payload of at least compress_threshold bytes is stored zstd-compressed and smaller."""
    plain = dumps(Serializer(codec, compress_threshold=None), BIG)
    packed = dumps(Serializer(codec, compress_threshold=1024), BIG)
    assert len(plain) - HEADER_SIZE >= 1024
    assert packed[4] & FLAG_ZSTD
    assert len(packed) < len(plain)
    assert zstandard.ZstdDecompressor().decompress(packed[HEADER_SIZE:]) == plain[HEADER_SIZE:]
    assert_same(Serializer(codec).loads(packed, key=K).value, BIG)


@pytest.mark.parametrize("codec", CODECS)
def test_payload_below_threshold_is_not_compressed(codec: str) -> None:
    """A payload shorter than compress_threshold is stored as is."""
    raw = dumps(Serializer(codec, compress_threshold=1024), {"id": 1, "name": "x" * 100})
    assert raw[4] & FLAG_ZSTD == 0


@pytest.mark.parametrize("codec", CODECS)
def test_threshold_none_never_compresses(codec: str) -> None:
    """compress_threshold=None stores even a large, compressible payload uncompressed."""
    raw = dumps(Serializer(codec, compress_threshold=None), BIG)
    assert raw[4] & FLAG_ZSTD == 0


def test_incompressible_payload_is_stored_uncompressed() -> None:
    """A payload zstd cannot shrink is stored as is, flag clear."""
    noise = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(64))
    raw = dumps(Serializer("msgpack", compress_threshold=0), noise)
    assert raw[4] & FLAG_ZSTD == 0
    assert SERIALIZERS["msgpack"].loads(raw, key=K).value == noise


def test_negative_threshold_is_a_configuration_error() -> None:
    """compress_threshold below zero is refused."""
    with pytest.raises(ConfigurationError, match="compress_threshold"):
        Serializer(compress_threshold=-1)


def _zstd_envelope(frame: bytes) -> bytes:
    return HEADER.pack(b"cL", 1, 1, FLAG_ZSTD, 0, 0, 0, 0) + frame


def test_zstd_frame_declaring_a_huge_size_raises_decode_error() -> None:
    """A forged zstd frame that declares 1 TiB of content is refused before decompressing."""
    # magic, descriptor 0xC0 (8-byte content size, windowed), window byte, size, raw block
    frame = b"\x28\xb5\x2f\xfd\xc0\x00" + struct.pack("<Q", 2**40) + b"\x01\x00\x00"
    assert zstandard.frame_content_size(frame) == 2**40
    with pytest.raises(DecodeError, match="declares"):
        SERIALIZERS["json"].loads(_zstd_envelope(frame), key=K)


def test_zstd_frame_without_a_content_size_raises_decode_error() -> None:
    """A zstd frame that does not declare its content size is refused."""
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"[1,2,3]")
    with pytest.raises(DecodeError, match="declares -1"):
        SERIALIZERS["json"].loads(_zstd_envelope(frame), key=K)


def test_zstd_payload_with_trailing_bytes_raises_decode_error() -> None:
    """Bytes after the single zstd frame make the entry a DecodeError."""
    frame = zstandard.ZstdCompressor().compress(b"[1,2,3]")
    assert SERIALIZERS["json"].loads(_zstd_envelope(frame), key=K).value == [1, 2, 3]
    with pytest.raises(DecodeError):
        SERIALIZERS["json"].loads(_zstd_envelope(frame + b"junk"), key=K)
    with pytest.raises(DecodeError):
        SERIALIZERS["json"].loads(_zstd_envelope(frame + frame), key=K)


# -- signing and pickle -----------------------------------------------------------------


class Opaque2:
    """A class no exact codec supports, for pickle."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return type(other) is Opaque2 and other.items == self.items

    __hash__ = None  # type: ignore[assignment]


def test_pickle_without_signing_key_is_a_configuration_error() -> None:
    """codec='pickle' needs a signing key."""
    with pytest.raises(ConfigurationError, match="signing_key"):
        Serializer("pickle")


def test_signed_pickle_round_trips_an_arbitrary_object() -> None:
    """With a key, pickle stores and returns an instance of a custom class."""
    ser = Serializer("pickle", signing_key=KEY_NEW)
    raw = dumps(ser, Opaque2([1, (2, 3)]))
    assert raw[3] == 3
    assert raw[4] & FLAG_SIGNED
    assert ser.loads(raw, key=K).value == Opaque2([1, (2, 3)])


def test_unsigned_pickle_payload_is_never_unpickled() -> None:
    """A forged unsigned pickle entry is refused by readers with and without a key."""
    raw = HEADER.pack(b"cL", 1, 3, 0, 0, 0, 0, 0) + pickle.dumps(Opaque2([1]))
    for ser in [SERIALIZERS["json"], Serializer("pickle", signing_key=KEY_NEW)]:
        with pytest.raises(DecodeError):
            ser.loads(raw, key=K)


@pytest.mark.parametrize("codec", CODECS)
def test_signature_is_hmac_sha256_of_key_header_and_payload(codec: str) -> None:
    """The last 32 bytes are HMAC-SHA256, with the first key, of the store key (uint32
    length, UTF-8) and every byte before them; a signed envelope is version 2."""
    raw = dumps(Serializer(codec, signing_key=[KEY_NEW, KEY_OLD]), {"a": (1,)})
    body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    bound = len(K).to_bytes(4, "big") + K.encode()
    assert mac == hmac.new(KEY_NEW, bound + body, hashlib.sha256).digest()
    assert raw[2] == 2
    assert body[HEADER_SIZE:] == dumps(Serializer(codec), {"a": (1,)})[HEADER_SIZE:]


@pytest.mark.parametrize("codec", CODECS)
def test_unsigned_entry_read_with_a_key_raises_decode_error(codec: str) -> None:
    """A reader that has a signing key refuses entries without a signature."""
    raw = dumps(Serializer(codec), [1])
    with pytest.raises(DecodeError, match="unsigned"):
        Serializer(codec, signing_key=KEY_NEW).loads(raw, key=K)


@pytest.mark.parametrize("codec", CODECS)
def test_signed_entry_read_without_a_key_raises_decode_error(codec: str) -> None:
    """A reader without a signing key refuses signed entries."""
    raw = dumps(Serializer(codec, signing_key=KEY_NEW), [1])
    with pytest.raises(DecodeError, match="signed"):
        Serializer(codec).loads(raw, key=K)


def test_key_rotation_reads_entries_signed_with_the_old_key() -> None:
    """signing_key=[new, old] reads old-key entries and signs new ones with the new key."""
    old_writer = Serializer("json", signing_key=KEY_OLD)
    rotated = Serializer("json", signing_key=[KEY_NEW, KEY_OLD])
    assert rotated.loads(dumps(old_writer, ("old",)), key=K).value == ("old",)
    fresh = dumps(rotated, ("new",))
    assert Serializer("json", signing_key=KEY_NEW).loads(fresh, key=K).value == ("new",)
    with pytest.raises(DecodeError, match="does not verify"):
        old_writer.loads(fresh, key=K)
    with pytest.raises(DecodeError, match="does not verify"):
        Serializer("json", signing_key=KEY_NEW).loads(dumps(old_writer, 1), key=K)


def test_str_signing_key_signs_like_its_utf8_bytes() -> None:
    """A str key is the same key as its UTF-8 encoding."""
    raw = dumps(Serializer("json", signing_key=KEY_NEW.decode()), [1])
    assert Serializer("json", signing_key=KEY_NEW).loads(raw, key=K).value == [1]


@pytest.mark.parametrize(
    "key",
    [b"", b"x" * 15, "y" * 15, [b"x" * 32, b"short"], [], bytearray(b"z" * 32), [12345]],
    ids=["empty", "15-bytes", "15-chars", "short-in-list", "empty-list", "bytearray", "int"],
)
def test_bad_signing_key_is_a_configuration_error(key: Any) -> None:
    """Keys under 16 bytes, empty lists and non-bytes keys are refused, never zero-filled."""
    with pytest.raises(ConfigurationError, match="signing_key"):
        Serializer("json", signing_key=key)


def test_unknown_codec_name_is_a_configuration_error() -> None:
    """An unknown codec name is refused, as a ConfigurationError that is also a ValueError."""
    with pytest.raises(ConfigurationError, match="unknown codec 'yaml'") as info:
        Serializer("yaml")
    assert isinstance(info.value, ValueError)


# -- header fields ----------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_header_layout_is_the_documented_one(codec: str) -> None:
    """Magic, version, codec id, flags, reserved and the big-endian fields sit where specified."""
    raw = dumps(
        SERIALIZERS[codec],
        "v",
        written_ms=0x0102030405060708,
        fresh_until_ms=0x1112131415161718,
        duration_ms=0x0A0B0C0D,
        negative=True,
    )
    assert raw[:2] == b"cL"
    assert raw[2] == 1
    assert raw[3] == {"json": 1, "msgpack": 2}[codec]
    assert raw[4] == FLAG_NEGATIVE
    assert raw[5] == 0
    assert raw[6:10] == bytes.fromhex("0a0b0c0d")
    assert raw[10:18] == bytes.fromhex("0102030405060708")
    assert raw[18:26] == bytes.fromhex("1112131415161718")


@pytest.mark.parametrize("codec", CODECS)
@given(
    written=st.integers(0, 2**64 - 1),
    fresh=st.integers(0, 2**64 - 1),
    duration=st.integers(-(2**40), 2**40),
    negative=st.booleans(),
)
def test_header_fields_round_trip(
    codec: str, written: int, fresh: int, duration: int, negative: bool
) -> None:
    """written_ms, fresh_until_ms and negative come back; duration is clamped to uint32."""
    raw = SERIALIZERS[codec].dumps(
        None, written_ms=written, fresh_until_ms=fresh, duration_ms=duration, negative=negative
    )
    entry = SERIALIZERS[codec].loads(raw, key=K)
    assert entry.written_ms == written
    assert entry.fresh_until_ms == fresh
    assert entry.duration_ms == min(max(duration, 0), 2**32 - 1)
    assert entry.negative is negative
    assert bool(raw[4] & FLAG_NEGATIVE) is negative
    assert entry.value is None


# -- the worked examples of docs/format.md ----------------------------------------------


def test_worked_examples_match_the_spec() -> None:
    """The bytes shown in docs/format.md are exactly what the code writes and reads."""
    w, f = 1_700_000_000_000, 1_700_000_300_000
    value = {"id": 42, "pos": (1, 2)}
    examples = [
        (
            Serializer("json").dumps(value, written_ms=w, fresh_until_ms=f, duration_ms=12),
            "634c 0101 08 00 0000000c 0000018bcfe56800 0000018bcfe9fbe0"
            "7b226964223a34322c22706f73223a7b2224636c223a5b227475706c65222c5b312c325d5d7d7d",
        ),
        (
            Serializer("msgpack").dumps(value, written_ms=w, fresh_until_ms=f, duration_ms=12),
            "634c 0102 00 00 0000000c 0000018bcfe56800 0000018bcfe9fbe0"
            "82a269642aa3706f73 c70301 920102",
        ),
        (
            Serializer("json", signing_key=b"0123456789abcdef").dumps(
                [1], written_ms=w, fresh_until_ms=0, key="shop:v1:user:42"
            ),
            "634c 0201 02 00 00000000 0000018bcfe56800 0000000000000000 5b315d"
            "510a8ce00cd2bc3266aa45f96695061ae92eaff9d1947f20de8606ee2371d22b",
        ),
        (
            Serializer("json").dumps(
                "hi",
                written_ms=w,
                fresh_until_ms=f,
                tags=[("{shop:v1:tags}:user:42", bytes.fromhex("8f3a01c2d4e5f607"))],
            ),
            "634c 0101 10 00 00000000 0000018bcfe56800 0000018bcfe9fbe0"
            "01 0016 7b73686f703a76313a746167737d3a757365723a3432 08 8f3a01c2d4e5f607 22686922",
        ),
    ]
    for raw, spec in examples:
        assert raw.hex() == spec.replace(" ", "")
    assert_same(Serializer("msgpack").loads(examples[1][0], key=K).value, value)
    entry = Serializer("json").loads(examples[3][0], key=K)
    assert entry.value == "hi"
    assert entry.tags == [("{shop:v1:tags}:user:42", bytes.fromhex("8f3a01c2d4e5f607"))]


def test_cache_register_type_covers_subclasses() -> None:
    """Cache.register_type(subclasses=True) passes through: a subclass round-trips."""
    from cachelayer import Cache

    class Shape:
        def __init__(self, size: int) -> None:
            self.size = size

    class Square(Shape):
        pass

    kinds = {"Square": Square}
    cache = Cache()
    cache.register_type(
        Shape,
        name="tests.Shape",
        dump=lambda s: {"kind": type(s).__name__, "size": s.size},
        load=lambda d: kinds[d["kind"]](d["size"]),
        subclasses=True,
    )
    cache.set("s", Square(3))
    got = cache.get("s")
    assert type(got) is Square
    assert got.size == 3
    cache.close()


# -- hostile entries: limits, key binding, versions --------------------------------------


@pytest.mark.parametrize("declared", [9 * 2**20, 2**20 + 1])
def test_zstd_frame_declaring_more_than_max_value_size_is_refused(declared: int) -> None:
    """A frame declaring more than max_value_size is refused before decompressing."""
    frame = b"\x28\xb5\x2f\xfd\xc0\x00" + struct.pack("<Q", declared) + b"\x01\x00\x00"
    with pytest.raises(DecodeError, match="max_value_size"):
        Serializer("json", max_value_size=2**20).loads(_zstd_envelope(frame), key=K)


def test_zstd_frame_holding_more_than_it_declares_is_refused() -> None:
    """A frame whose content outgrows its declared size fails when the buffer is full."""
    frame = bytearray(zstandard.ZstdCompressor().compress(b"[" + b"1," * 5000 + b"1]"))
    declared = zstandard.frame_content_size(bytes(frame))
    frame[5:7] = (100).to_bytes(2, "little")  # 2-byte FCS field holds size - 256
    assert zstandard.frame_content_size(bytes(frame)) == 356 != declared
    with pytest.raises(DecodeError):
        SERIALIZERS["json"].loads(_zstd_envelope(bytes(frame)), key=K)


@pytest.mark.parametrize("head", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff"])
def test_msgpack_lengths_longer_than_the_payload_are_refused(head: bytes) -> None:
    """A msgpack array, map or str whose length exceeds the payload is a DecodeError."""
    raw = HEADER.pack(b"cL", 1, 2, 0, 0, 0, 0, 0) + head + b"\xff\xff\xff" + b"\xc0" * 8
    with pytest.raises(DecodeError):
        SERIALIZERS["msgpack"].loads(raw, key=K)


@pytest.mark.parametrize("codec", CODECS)
def test_signed_entry_verifies_only_under_its_key(codec: str) -> None:
    """The MAC covers the store key: the same bytes under another key do not verify."""
    ser = Serializer(codec, signing_key=KEY_NEW)
    raw = dumps(ser, ["admin", "billing"], key="ns:v1:user:1:permissions")
    assert ser.loads(raw, key="ns:v1:user:1:permissions").value == ["admin", "billing"]
    for other in ["ns:v1:user:2:permissions", "ns:v2:user:1:permissions", "", K]:
        with pytest.raises(DecodeError, match="does not verify"):
            ser.loads(raw, key=other)


def test_signing_serializer_needs_the_store_key() -> None:
    """A signing Serializer called without a key raises TypeError (a bug, not a miss)."""
    ser = Serializer("json", signing_key=KEY_NEW)
    with pytest.raises(TypeError, match="store key"):
        ser.dumps(1, written_ms=0, fresh_until_ms=0)
    raw = dumps(ser, 1)
    with pytest.raises(TypeError, match="store key"):
        ser.loads(raw)


def test_version_1_signed_entry_is_refused() -> None:
    """A signed entry of version 1 (MAC without the key, still valid) is a DecodeError."""
    body = HEADER.pack(b"cL", 1, 1, FLAG_SIGNED, 0, 0, 0, 0) + b"[1]"
    raw = body + hmac.new(KEY_NEW, body, hashlib.sha256).digest()
    with pytest.raises(DecodeError, match="version 1"):
        Serializer("json", signing_key=KEY_NEW).loads(raw, key=K)


def test_unsigned_entries_stay_version_1_and_any_key_reads_them() -> None:
    """Unsigned entries keep version 1 (old readers read them) and bind no key."""
    raw = dumps(SERIALIZERS["json"], [1])
    assert raw[2] == 1
    assert SERIALIZERS["json"].loads(raw, key="anything").value == [1]
    with pytest.raises(DecodeError, match="version 2"):
        SERIALIZERS["json"].loads(raw[:2] + b"\x02" + raw[3:], key=K)


def test_worked_signed_example_binds_its_key() -> None:
    """The signed worked example verifies at shop:v1:user:42 and not at user:43."""
    ser = Serializer("json", signing_key=b"0123456789abcdef")
    raw = ser.dumps([1], written_ms=1_700_000_000_000, fresh_until_ms=0, key="shop:v1:user:42")
    assert ser.loads(raw, key="shop:v1:user:42").value == [1]
    with pytest.raises(DecodeError):
        ser.loads(raw, key="shop:v1:user:43")


def test_json_serializer_with_a_key_never_unpickles() -> None:
    """A verified pickle entry is still a DecodeError for a JSON or msgpack Serializer."""
    raw = dumps(Serializer("pickle", signing_key=KEY_NEW), Opaque2([1]))
    for codec in CODECS:
        with pytest.raises(DecodeError, match="codec id 3"):
            Serializer(codec, signing_key=KEY_NEW).loads(raw, key=K)
