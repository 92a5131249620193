"""Value codecs: Python values <-> payload bytes, exact round trips or a TypeError.

A codec turns a value into bytes and back, and it is *exact*: what comes back has the
same types as what went in (a tuple stays a tuple, a datetime stays a datetime with its
tzinfo, a Decimal keeps its digits). A value of a type the codec cannot bring back
exactly raises ``TypeError`` naming the type, at encode time. Types can be added with
:class:`TypeRegistry`. The envelope around the payload lives in ``_envelope.py``; the
wire format is specified in ``docs/format.md``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import pickle
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

import orjson

__all__ = [
    "CODEC_JSON",
    "CODEC_MSGPACK",
    "CODEC_PICKLE",
    "FLAG_TAGGED",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "PickleCodec",
    "TypeRegistry",
]

CODEC_JSON = 1
CODEC_MSGPACK = 2
CODEC_PICKLE = 3

#: Envelope flag a codec may set: the payload holds tagged values, so the decoder must
#: walk it. A payload without it is plain JSON and decodes with one ``orjson.loads``.
FLAG_TAGGED = 0x08

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

#: Distinct decoded values that may share one hash before a payload is refused. A set or
#: dict whose keys share a hash costs one comparison per key already in it, for each key
#: inserted; the hashes of ints (and so of UUIDs, Decimals, tuples and frozensets of them)
#: are easy to make collide, so a forged set or map of n such keys would take n**2 / 2
#: comparisons to build: minutes for a payload of a few MiB. Legitimate values almost
#: never hold two distinct keys with one hash (``-1`` and ``-2`` do).
MAX_SAME_HASH = 64
_NOTHING = object()


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # a user type's __eq__: treat as distinct
        return False


class _HashGuard:
    """Refuses a payload once more than MAX_SAME_HASH distinct values share a hash.

    One guard per decode, fed every decoded value that may become a set element or a
    dict key; equal values (duplicates) are free. Costs one hash per value checked and
    at most MAX_SAME_HASH comparisons, so a forged payload is refused in linear time.
    """

    __slots__ = ("_more", "_seen")

    def __init__(self) -> None:
        self._seen: dict[int, Any] = {}
        self._more: dict[int, list[Any]] = {}

    def check(self, value: Any) -> None:
        t = type(value)
        if t is str or t is bytes or value is None or t is bool:
            return  # str and bytes hashes are salted per process; None, bool: one value
        if t is int and _I64_MIN <= value < 2**64:
            return  # at most 13 of these share a hash (hash(n) is n mod 2**61-1)
        try:
            h = hash(value)
        except Exception:  # unhashable: it can be neither a key nor a set element
            return
        first = self._seen.get(h, _NOTHING)
        if first is _NOTHING:
            self._seen[h] = value
            return
        if _same(first, value):
            return
        more = self._more.setdefault(h, [])
        if any(_same(other, value) for other in more):
            return
        if len(more) + 1 >= MAX_SAME_HASH:
            raise ValueError(f"more than {MAX_SAME_HASH} distinct values share one hash")
        more.append(value)

    def all(self, values: list[Any]) -> list[Any]:
        for value in values:
            self.check(value)
        return values


class Codec(Protocol):
    """Turns values into payload bytes and back, exactly."""

    codec_id: int

    def encode(self, value: Any) -> tuple[bytes, int]:
        """Return the payload and the envelope flags it needs (``FLAG_TAGGED`` or 0)."""
        ...

    def decode(self, payload: bytes, flags: int) -> Any:
        """Rebuild the value; any exception means the payload is corrupt."""
        ...


@dataclasses.dataclass(frozen=True)
class _Registered:
    cls: type
    name: str
    dump: Callable[[Any], Any]
    load: Callable[[Any], Any]


class TypeRegistry:
    """User types a codec may store, each under a stable name.

    A registered object is stored as its name and ``dump(obj)`` (which must return a
    value the codec supports) and rebuilt with ``load(data)``. Dataclasses need no
    functions: their fields are dumped to a dict and passed back as keyword arguments.
    Only registered names are ever rebuilt: a stored name decides nothing else.

    A registration with ``subclasses=True`` covers a family: the class and every subclass
    of it, under one name. Its ``dump`` gets the instance of the subclass and must record
    what ``load`` needs to rebuild that subclass, and ``load`` decides what it is willing
    to rebuild (the Django integration stores a model's label and rebuilds only models
    of Django's app registry).
    """

    def __init__(self) -> None:
        self._by_cls: dict[type, _Registered] = {}
        self._by_name: dict[str, _Registered] = {}
        self._families: dict[type, _Registered] = {}
        self._derived: dict[type, _Registered] = {}  # subclass -> its family, memoized
        from ._autotypes import register_standard_types

        register_standard_types(self)

    def register(
        self,
        cls: type,
        *,
        name: str | None = None,
        dump: Callable[[Any], Any] | None = None,
        load: Callable[[Any], Any] | None = None,
        subclasses: bool = False,
    ) -> None:
        """Allow instances of exactly ``cls`` (or, with ``subclasses``, of its family) to
        be cached.

        Args:
            cls: the class; subclasses are not covered unless ``subclasses`` is true.
            name: the stable name stored with the value; defaults to
                ``module.QualName``. Keep it when you move the class.
            dump: object -> supported value; defaults to the fields of a dataclass, a
                pydantic model's ``model_dump()``, an Enum member's value.
            load: supported value -> object; defaults to ``cls(**fields)``,
                ``model_validate``, ``cls(value)``.
            subclasses: also cover every subclass of ``cls``, present and future, under
                this one name. ``dump`` and ``load`` are then required, and they must
                carry the concrete class themselves (``load`` must refuse what it should
                not build). A class registered on its own, and the nearest family in its
                MRO, take precedence over a family further up.

        Raises:
            TypeError: ``cls`` is none of those kinds and ``dump``/``load`` are missing, or
                ``subclasses`` is true and either is missing.
            ValueError: the name is taken by another class.
        """
        if subclasses and (dump is None or load is None):
            raise TypeError(
                f"register_type({cls!r}, subclasses=True): pass dump= and load= that keep "
                "the concrete class (the defaults would rebuild the base class)"
            )
        if dump is None or load is None:
            from ._autotypes import default_codec_for

            default = default_codec_for(cls) if isinstance(cls, type) else None
            if default is None:
                raise TypeError(
                    f"register_type({cls!r}): pass dump= and load= for a class that is not "
                    "a dataclass, a pydantic model or an Enum"
                )
            dump = dump or default[0]
            load = load or default[1]
        name = name or f"{cls.__module__}.{cls.__qualname__}"
        taken = self._by_name.get(name)
        if taken is not None and taken.cls is not cls:
            raise ValueError(f"type name {name!r} is already registered for {taken.cls!r}")
        entry = _Registered(cls, name, dump, load)
        self._by_cls[cls] = entry
        self._by_name[name] = entry
        if subclasses:
            self._families[cls] = entry
        else:
            self._families.pop(cls, None)
        self._derived.clear()

    def lookup_type(self, cls: type) -> _Registered | None:
        entry = self._by_cls.get(cls)
        if entry is not None or not self._families:
            return entry
        entry = self._derived.get(cls)
        if entry is None:
            for base in cls.__mro__[1:]:
                entry = self._families.get(base)
                if entry is not None:
                    self._derived[cls] = entry
                    break
        return entry

    def lookup_name(self, name: str) -> _Registered:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"stored value names unregistered type {name!r}") from None


def _unsupported(value: Any) -> TypeError:
    cls = type(value)
    return TypeError(
        f"cachelayer cannot store a value of type {cls.__module__}.{cls.__qualname__} "
        "exactly; convert it to a supported type or register it with "
        "Cache.register_type() (see docs/values.md)"
    )


def _tz_spec(tz: dt.tzinfo | None, value: Any) -> Any:
    if tz is None:
        return None
    if type(tz) is dt.timezone:
        args = tz.__getinitargs__()  # type: ignore[attr-defined]
        offset = args[0] // dt.timedelta(microseconds=1)
        return ["fixed", offset, args[1] if len(args) > 1 else None]
    key = getattr(tz, "key", None)
    if type(tz).__name__ == "ZoneInfo" and isinstance(key, str):
        return ["zone", key]
    raise TypeError(
        f"cachelayer cannot store {type(value).__name__} with tzinfo of type "
        f"{type(tz).__module__}.{type(tz).__qualname__}; use datetime.timezone or "
        "zoneinfo.ZoneInfo"
    )


def _tz_from(spec: Any) -> dt.tzinfo | None:
    if spec is None:
        return None
    if spec[0] == "fixed":
        offset = dt.timedelta(microseconds=spec[1])
        return dt.timezone(offset) if spec[2] is None else dt.timezone(offset, spec[2])
    if spec[0] == "zone":
        import zoneinfo

        return zoneinfo.ZoneInfo(spec[1])
    raise ValueError(f"unknown tz spec {spec!r}")


# -- tagged atoms shared by both codecs: type -> (tag, to_data); tag -> from_data ------


def _dump_datetime(v: dt.datetime) -> Any:
    return [v.replace(tzinfo=None, fold=0).isoformat(), _tz_spec(v.tzinfo, v), v.fold]


def _load_datetime(d: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(d[0]).replace(tzinfo=_tz_from(d[1]), fold=d[2])


def _dump_time(v: dt.time) -> Any:
    return [v.replace(tzinfo=None, fold=0).isoformat(), _tz_spec(v.tzinfo, v), v.fold]


def _load_time(d: Any) -> dt.time:
    return dt.time.fromisoformat(d[0]).replace(tzinfo=_tz_from(d[1]), fold=d[2])


_ATOM_DUMP: dict[type, tuple[str, Callable[[Any], Any]]] = {
    dt.datetime: ("dt", _dump_datetime),
    dt.date: ("date", lambda v: v.isoformat()),
    dt.time: ("time", _dump_time),
    dt.timedelta: ("td", lambda v: [v.days, v.seconds, v.microseconds]),
    UUID: ("uuid", lambda v: v.hex),
    Decimal: ("dec", str),
}
_ATOM_LOAD: dict[str, Callable[[Any], Any]] = {
    "dt": _load_datetime,
    "date": dt.date.fromisoformat,
    "time": _load_time,
    "td": lambda d: dt.timedelta(days=d[0], seconds=d[1], microseconds=d[2]),
    "uuid": lambda d: UUID(hex=d),
    "dec": Decimal,
}


class JsonCodec:
    """JSON through orjson; non-JSON types as ``{"$cl": [tag, data]}`` objects.

    Plain JSON documents (str-keyed dicts, lists, str, finite floats, 64-bit ints, bools,
    null) carry no tags and decode with a single ``orjson.loads``: the common case pays
    nothing for exactness. A user dict whose only key is ``"$cl"`` is stored as a tagged
    map, so it can never be mistaken for a tag.
    """

    codec_id = CODEC_JSON
    TAG = "$cl"

    def __init__(self, registry: TypeRegistry | None = None) -> None:
        self._registry = registry or TypeRegistry()

    def encode(self, value: Any) -> tuple[bytes, int]:
        tagged = False
        tag_key = self.TAG
        registry = self._registry

        def conv(v: Any) -> Any:
            nonlocal tagged
            t = type(v)
            if t is str or t is bool or v is None:
                return v
            if t is int:
                if _I64_MIN <= v <= _I64_MAX:
                    return v
                tagged = True
                return {tag_key: ["int", str(v)]}
            if t is float:
                if v - v == 0.0:  # finite
                    return v
                tagged = True
                return {tag_key: ["float", repr(v)]}
            if t is dict:
                if all(type(k) is str for k in v) and not (len(v) == 1 and tag_key in v):
                    return {k: conv(x) for k, x in v.items()}
                tagged = True
                return {tag_key: ["map", [[conv(k), conv(x)] for k, x in v.items()]]}
            if t is list:
                return [conv(x) for x in v]
            tagged = True
            if t is tuple:
                return {tag_key: ["tuple", [conv(x) for x in v]]}
            if t is set or t is frozenset:
                return {tag_key: [t.__name__, [conv(x) for x in v]]}
            if t is bytes:
                return {tag_key: ["bytes", base64.b64encode(v).decode("ascii")]}
            atom = _ATOM_DUMP.get(t)
            if atom is not None:
                return {tag_key: [atom[0], atom[1](v)]}
            reg = registry.lookup_type(t)
            if reg is not None:
                return {tag_key: ["x", reg.name, conv(reg.dump(v))]}
            raise _unsupported(v)

        tree = conv(value)
        return orjson.dumps(tree), FLAG_TAGGED if tagged else 0

    def decode(self, payload: bytes, flags: int) -> Any:
        tree = orjson.loads(payload)
        if not flags & FLAG_TAGGED:
            return tree
        tag_key = self.TAG
        registry = self._registry
        guard = _HashGuard()

        def back(v: Any) -> Any:
            t = type(v)
            if t is list:
                return [back(x) for x in v]
            if t is not dict:
                return v
            if len(v) != 1 or tag_key not in v:
                return {k: back(x) for k, x in v.items()}
            tag, data = v[tag_key][0], v[tag_key][1:]
            if tag == "map":
                pairs = [(back(k), back(x)) for k, x in data[0]]
                guard.all([k for k, _ in pairs])
                return dict(pairs)
            if tag == "tuple":
                return tuple(back(x) for x in data[0])
            if tag == "set":
                return set(guard.all([back(x) for x in data[0]]))
            if tag == "frozenset":
                return frozenset(guard.all([back(x) for x in data[0]]))
            if tag == "bytes":
                return base64.b64decode(data[0], validate=True)
            if tag == "int":
                return int(data[0])
            if tag == "float":
                return float(data[0])
            if tag == "x":
                return registry.lookup_name(data[0]).load(back(data[1]))
            return _ATOM_LOAD[tag](data[0])

        return back(tree)


# msgpack extension type codes; the ext data is itself msgpack (or a str for atoms).
_EXT_TUPLE, _EXT_SET, _EXT_FROZENSET, _EXT_BIGINT, _EXT_ATOM, _EXT_USER = 1, 2, 3, 4, 5, 127
# Each level of extension nesting (a tuple in a tuple...) is one nested msgpack call that
# goes through C: deeper values are refused so that stored bytes cannot exhaust the C stack.
MAX_EXT_DEPTH = 100
_UNPACKB_MAX_DEPTH = 2


class MsgpackCodec:
    """msgpack with exact types: containers and atoms as extension types.

    Packs with ``strict_types`` so that a tuple, a dict subclass or an ``IntEnum`` is
    never silently packed as its base type.
    """

    codec_id = CODEC_MSGPACK

    def __init__(self, registry: TypeRegistry | None = None) -> None:
        import msgpack

        self._registry = registry or TypeRegistry()
        self._msgpack = msgpack
        self._ext = msgpack.ExtType
        # per nesting depth, the callbacks that handle the next level (made once, not per call)
        self._defaults = [self._default_at(d + 1) for d in range(MAX_EXT_DEPTH + 1)]

    def _default_at(self, depth: int) -> Callable[[Any], Any]:
        return lambda v: self._default(v, depth)

    def _pack(self, value: Any, depth: int = 0) -> bytes:
        if depth > MAX_EXT_DEPTH:
            raise TypeError(
                f"cachelayer cannot store tuples, sets or typed values nested more than "
                f"{MAX_EXT_DEPTH} deep with msgpack"
            )
        packed: bytes = self._msgpack.packb(
            value,
            default=self._defaults[depth],
            strict_types=True,
            use_bin_type=True,
        )
        return packed

    def _default(self, v: Any, depth: int) -> Any:
        t = type(v)
        ext = self._ext
        if t is tuple:
            return ext(_EXT_TUPLE, self._pack(list(v), depth))
        if t is set:
            return ext(_EXT_SET, self._pack(list(v), depth))
        if t is frozenset:
            return ext(_EXT_FROZENSET, self._pack(list(v), depth))
        if t is int:
            return ext(_EXT_BIGINT, str(v).encode())
        atom = _ATOM_DUMP.get(t)
        if atom is not None:
            return ext(_EXT_ATOM, self._pack([atom[0], atom[1](v)], depth))
        reg = self._registry.lookup_type(t)
        if reg is not None:
            return ext(_EXT_USER, self._pack([reg.name, reg.dump(v)], depth))
        raise _unsupported(v)

    def _unpack(self, data: bytes, run: _Unpacking, depth: int = 0) -> Any:
        # Extension payloads are unpacked from inside ext_hook, one nested call per level.
        # unpackb() keeps its whole parse stack (~40 KiB) on the C stack: a dozen nested
        # tuples overflowed a 512 KiB thread stack and crashed the process. So only the
        # first levels use the fast unpackb(); deeper ones use an Unpacker, whose stack is
        # on the heap, and MAX_EXT_DEPTH bounds the nesting.
        if depth > MAX_EXT_DEPTH:
            raise ValueError(f"msgpack extensions nested more than {MAX_EXT_DEPTH} deep")
        hook = run.hook(depth + 1)
        # No length in the data can exceed the data itself (every item takes >= 1 byte):
        # a forged length fails at once instead of sizing an allocation.
        n = len(data) or 1
        if depth <= _UNPACKB_MAX_DEPTH:
            return self._msgpack.unpackb(
                data,
                ext_hook=hook,
                raw=False,
                strict_map_key=False,
                use_list=True,
                max_str_len=n,
                max_bin_len=n,
                max_array_len=n,
                max_map_len=n,
                max_ext_len=n,
            )
        unpacker = self._msgpack.Unpacker(
            ext_hook=hook,
            raw=False,
            strict_map_key=False,
            use_list=True,
            max_buffer_size=n,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=n,
        )
        unpacker.feed(data)
        value = unpacker.unpack()
        if unpacker.tell() != len(data):
            raise ValueError("bytes left over after the msgpack value")
        return value

    def _ext_hook(self, code: int, data: bytes, run: _Unpacking, depth: int) -> Any:
        # Every value an extension stands for may be a map key, which msgpack inserts
        # itself: the guard sees each one before msgpack can hash it into a dict.
        value: Any
        if code == _EXT_TUPLE:
            value = tuple(self._unpack(data, run, depth))
        elif code == _EXT_SET:
            value = set(self._unpack(data, run, depth))
        elif code == _EXT_FROZENSET:
            value = frozenset(self._unpack(data, run, depth))
        elif code == _EXT_BIGINT:
            value = int(data.decode("ascii"))
        elif code == _EXT_ATOM:
            tag, payload = self._unpack(data, run, depth)
            value = _ATOM_LOAD[tag](payload)
        elif code == _EXT_USER:
            name, payload = self._unpack(data, run, depth)
            value = self._registry.lookup_name(name).load(payload)
        else:
            raise ValueError(f"unknown msgpack extension code {code}")
        run.guard.check(value)
        return value

    def encode(self, value: Any) -> tuple[bytes, int]:
        _refuse_bytes_like(value)
        return self._pack(value), 0

    def decode(self, payload: bytes, flags: int) -> Any:
        return self._unpack(payload, _Unpacking(self))


class _Unpacking:
    """The state of one msgpack decode: its hash guard, and its ext hook per depth (made
    once per decode and depth, not per extension value)."""

    __slots__ = ("_codec", "_hooks", "guard")

    def __init__(self, codec: MsgpackCodec) -> None:
        self._codec = codec
        self._hooks: list[Callable[[int, bytes], Any]] = []
        self.guard = _HashGuard()

    def hook(self, depth: int) -> Callable[[int, bytes], Any]:
        while len(self._hooks) < depth:
            self._hooks.append(self._hook_at(len(self._hooks) + 1))
        return self._hooks[depth - 1]

    def _hook_at(self, depth: int) -> Callable[[int, bytes], Any]:
        ext_hook = self._codec._ext_hook  # noqa: SLF001 - the codec's own helper
        return lambda code, data: ext_hook(code, data, self, depth)


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _refuse_bytes_like(value: Any) -> None:
    """msgpack packs bytearray and memoryview as bin even with strict_types, so they would
    come back as bytes: refuse them, as the JSON codec does."""
    t = type(value)
    if t is bytearray or t is memoryview:
        raise _unsupported(value)
    if t in _CONTAINERS:
        for item in value.items() if t is dict else value:
            _refuse_bytes_like(item)


class PickleCodec:
    """pickle, for values no exact codec covers. Only ever used signed.

    The Serializer refuses to build a pickle codec without a signing key and refuses to
    unpickle a payload whose HMAC does not verify: whoever can write to the store must
    not be able to run code in every process that reads it.
    """

    codec_id = CODEC_PICKLE

    def encode(self, value: Any) -> tuple[bytes, int]:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 0

    def decode(self, payload: bytes, flags: int) -> Any:
        return pickle.loads(payload)  # noqa: S301 - only reached after the HMAC verified
