"""Keys: namespacing, stable rendering of arguments, escaping, long-key hashing.

Every store key is ``<namespace>:v<version>:<key>``. Values that come from callers
(arguments of a decorated function) are rendered by :func:`render`, which is injective
and leaves only ``[A-Za-z0-9_.~%-]`` plus its own markers, so an argument like ``"1:*"``
or ``"a b"`` can neither collide with another key nor act as a glob or a hash tag. See
docs/keys.md.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import inspect
import re
import string
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from uuid import UUID

from .errors import ConfigurationError

__all__ = ["KeyBuilder", "call_key_function", "derived_key", "escape", "render"]

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_SAFE = "_.-"


def escape(text: str) -> str:
    """Percent-encode everything but ``[A-Za-z0-9_.~-]`` (UTF-8 bytes, upper-case hex).

    Lone surrogates are encoded as their 3-byte ``surrogatepass`` sequences, so any ``str``
    (one decoded from untrusted JSON, say) renders, and distinct strings stay distinct.
    """
    return quote(text, safe=_SAFE, errors="surrogatepass")


def _render_str(text: str) -> str:
    if not text:
        return "!s"
    first = text[0]
    if first.isascii() and (first.isdigit() or first == "-"):
        # An escaped string never starts like an int, so "42" and 42 stay apart.
        return f"%{ord(first):02X}" + escape(text[1:])
    return escape(text)


def _render_seq(open_: str, items: list[str], close: str) -> str:
    return open_ + ",".join(items) + close


def render(value: Any, name: str = "argument") -> str:
    """Render one argument value as a key part, stably across processes and runs.

    ``str`` renders as itself when it is made of safe characters, ``int`` as its digits;
    every other supported type gets a ``!`` marker, which an escaped string never holds.

    Raises:
        TypeError: the value has no stable rendering (an object whose repr holds an
            address, say); the message names the argument. Give the class a
            ``__cache_key__(self) -> str`` method, or pass ``key=`` to ``cached``.
    """
    t = type(value)
    if t is str:
        return _render_str(value)
    if t is int:
        return str(value)
    if value is None:
        return "!N"
    if t is bool:
        return "!T" if value else "!F"
    if t is float:
        return "!f" + escape(repr(value))
    if t is bytes:
        return "!b" + str(value.hex())
    if t is UUID:
        return "!u" + str(value.hex)
    if t is dt.datetime:
        return "!t" + escape(value.isoformat())
    if t is dt.date:
        return "!d" + str(value.isoformat())
    if t is dt.time:
        return "!h" + escape(value.isoformat())
    if t is dt.timedelta:
        return f"!D{value.days}.{value.seconds}.{value.microseconds}"
    if t is Decimal:
        return "!x" + escape(str(value))
    if t is tuple:
        return _render_seq("!(", [render(v, name) for v in value], ")")
    if t is list:
        return _render_seq("![", [render(v, name) for v in value], "]")
    if t is dict:
        items = sorted(f"{render(k, name)}={render(v, name)}" for k, v in value.items())
        return _render_seq("!m(", items, ")")
    if t is set or t is frozenset:
        items = sorted(render(v, name) for v in value)
        return _render_seq("!<" if t is set else "!z<", items, ">")
    if isinstance(value, enum.Enum):
        return "!E" + escape(f"{t.__module__}.{t.__qualname__}.{value.name}")
    hook = getattr(value, "__cache_key__", None)
    if hook is not None and callable(hook):
        return "!k" + escape(f"{t.__module__}.{t.__qualname__}") + "(" + escape(str(hook())) + ")"
    raise TypeError(
        f"cannot build a cache key from {name!r}: a {t.__module__}.{t.__qualname__} has no "
        "stable rendering; give its class a __cache_key__() method or pass key= to cached()"
    )


def has_hash_tag(key: str) -> bool:
    """Does Redis Cluster hash only part of ``key``? (a first ``{`` with a later ``}``
    and something between them)"""
    start = key.find("{")
    if start == -1:
        return False
    end = key.find("}", start + 1)
    return end > start + 1


def derived_key(key: str, suffix: str) -> str:
    """A key for data about the store key ``key`` (its lease, its lock) that hashes to
    ``key``'s cluster slot and that no caller's key or tag can spell.

    Redis Cluster hashes only the first non-empty ``{...}`` of a key when there is one,
    else the whole key. A key without a hash tag is wrapped in one: ``{key}:suffix``. A key
    with one gets that tag in front: ``{tag}:suffix:key``. Either way the derived key
    starts with ``{``, which no store key from :meth:`KeyBuilder.full` does (they start
    with the namespace), and ``suffix`` comes right after the first ``}``, where a tag key
    (``{ns:vN:}tags:...``) has ``tags`` and no other derived key has this suffix.

    Raises:
        ValueError: ``key`` holds a ``}`` but no hash tag: no derived key can share its
            slot (:meth:`KeyBuilder.full` never returns such a key).
    """
    if has_hash_tag(key):
        start = key.find("{")
        tag = key[start : key.find("}", start + 1) + 1]
        return f"{tag}:{suffix}:{key}"
    if "}" in key:
        raise ValueError(f"key {key!r:.80} holds '}}' outside a hash tag")
    return f"{{{key}}}:{suffix}"


def _check_encodable(key: str) -> None:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"cache key {key!r:.80} holds {key[exc.start]!r} at {exc.start}, a lone surrogate "
            "with no UTF-8 form: decode the text it came from with errors='replace'"
        ) from None


class KeyBuilder:
    """Turns a caller's key into the store key ``namespace:v<version>:key``.

    Args:
        namespace: the application's name in a shared store; ``[A-Za-z0-9_.-]+``.
        version: bump it on a deploy that changes what is cached, to orphan the old keys.
        max_length: store keys of this many characters or more are cut to exactly this
            length: a readable head, then ``#<blake2b-128 hex>`` of the whole key.
    """

    def __init__(self, namespace: str, version: int | str = 1, max_length: int = 250) -> None:
        if not isinstance(namespace, str) or not _NAME_RE.fullmatch(namespace):
            raise ConfigurationError(
                f"namespace {namespace!r} must be non-empty and made of A-Z a-z 0-9 _ . -"
            )
        if not _NAME_RE.fullmatch(str(version)):
            raise ConfigurationError(f"version {version!r} must be made of A-Z a-z 0-9 _ . -")
        if max_length < 64:
            raise ConfigurationError(f"max_key_length {max_length} is below the minimum of 64")
        self.namespace = namespace
        self.version = str(version)
        self.prefix = f"{namespace}:v{version}:"
        self.max_length = max_length
        # Every tag key shares the hash tag {<prefix>} (one cluster slot, one MGET). No
        # value key starts with "{", and a derived key has a non-empty caller key
        # between "{<prefix>" and "}", so no caller key or tag can spell another's key.
        self._tag_prefix = "{" + self.prefix + "}tags:"

    def full(self, key: str) -> str:
        """The store key for a caller's key.

        Raises:
            TypeError: ``key`` is not a ``str``.
            ValueError: ``key`` is empty, or holds a lone surrogate (no UTF-8 form, so
                no store could hold it).
        """
        if not isinstance(key, str):
            raise TypeError(f"cache keys are str, got {type(key).__name__}: {key!r:.60}")
        if not key:
            raise ValueError("cache key is empty")
        full = self.prefix + key
        if not full.isascii():
            _check_encodable(key)
        if "}" in full and not has_hash_tag(full):
            raise ValueError(
                f"cache key {key!r:.80} holds '}}' outside a {{hash tag}}: braces in keys are "
                "reserved for Redis Cluster hash tags"
            )
        return self._shorten(full)

    def _shorten(self, full: str) -> str:
        # A shortened key is exactly max_length long, so only keys shorter than that are
        # kept as they are: a caller's key can never spell another key's shortened form.
        if len(full) < self.max_length:
            return full
        digest = hashlib.blake2b(full.encode("utf-8", "surrogatepass"), digest_size=16)
        head = full[: self.max_length - 33]
        if "}" in head and not has_hash_tag(head):
            # The cut lost the hash tag: drop the stray '}' so the shortened key and its
            # lease still share a slot (the digest keeps shortened keys distinct).
            head = head.replace("}", "_")
        return head + "#" + digest.hexdigest()

    def tag(self, tag: str) -> str:
        """The store key holding a tag's token: ``{<prefix>}tags:<tag>``.

        Every tag of a namespace shares one Redis Cluster slot, so one MGET reads them. A
        long tag is shortened as a long key is (a readable head, then a hash of the whole),
        so a tag of any length is checked before a load and never becomes a huge key.
        """
        if not isinstance(tag, str) or not tag:
            raise TypeError(f"a tag is a non-empty str, not {tag!r:.60}")
        if not tag.isascii():
            _check_encodable(tag)
        return self._shorten(self._tag_prefix + tag)

    def pattern(self) -> str:
        """A glob that matches every key of this namespace and version (for SCAN)."""
        return self.prefix + "*"


def _template_fields(template: str) -> list[str]:
    fields = []
    after_field = False  # the previous part was a field with no text after it
    for literal, field, spec, conv in string.Formatter().parse(template):
        if after_field and not literal and field is not None:
            raise ConfigurationError(
                f"key template {template!r}: two fields with nothing between them make "
                "different calls share a key ('bob1', 2 and 'bob', 12 both give 'bob12'); "
                "put a separator between them, e.g. '{a}:{b}'"
            )
        after_field = field is not None
        if field is None:
            continue
        if not field.isidentifier() or spec or conv:
            raise ConfigurationError(
                f"key template {template!r}: {{{field}}} must be a plain parameter name "
                "(no attributes, indexes, conversions or format specs); pass a callable "
                "as key= for anything else"
            )
        fields.append(field)
    return fields


def _owner(name: str, owner: Any) -> str:
    """How a method's ``self`` or ``cls`` enters an automatic key: its class always (a
    subclass that inherits the method must not share its base's entries), and the
    instance itself when its class says how (``__cache_key__``)."""
    cls = owner if isinstance(owner, type) else type(owner)
    mark = name + "=!T" + escape(f"{cls.__module__}.{cls.__qualname__}")
    if not isinstance(owner, type) and callable(getattr(owner, "__cache_key__", None)):
        mark += "!" + render(owner, name)
    return mark + ";"


def call_key_function(
    func: Callable[..., Any], key: str | Callable[..., str] | None, skip: int = 0
) -> Callable[[tuple[Any, ...], Mapping[str, Any]], str]:
    """Build ``(args, kwargs) -> key`` for calls of ``func``.

    With ``key=None`` the key is the function's qualified name and every bound argument;
    a template (``"user:{user_id}"``) renders only the named parameters; a callable gets
    the call's arguments and returns the key itself. Positional and keyword spellings of
    one call give one key, and defaults are applied. ``skip`` leading parameters (a
    method's ``self`` or ``cls``) are left out of the automatic key.

    Raises:
        ConfigurationError: a template names a parameter ``func`` does not have.
    """
    if callable(key):
        user_key = key
        return lambda args, kwargs: user_key(*args, **kwargs)
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    names = [p.name for p in params]
    simple = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
    defaults = {p.name: p.default for p in params if p.default is not p.empty}

    def bind(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if simple and len(args) <= len(names):
            values = dict(zip(names, args, strict=False))
            if kwargs:
                if any(k in values or k not in sig.parameters for k in kwargs):
                    return _slow_bind(args, kwargs)
                values.update(kwargs)
            if len(values) < len(names):
                for n in names:
                    if n not in values:
                        if n not in defaults:
                            return _slow_bind(args, kwargs)
                        values[n] = defaults[n]
            return values
        return _slow_bind(args, kwargs)

    def _slow_bind(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        bound = sig.bind(*args, **kwargs)  # raises TypeError like the call itself would
        bound.apply_defaults()
        return dict(bound.arguments)

    if key is None:
        head = escape(f"{func.__module__}.{func.__qualname__}") + ":"

        keyed = names[skip:]

        def auto_key(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
            values = bind(args, kwargs)
            rendered = ",".join(f"{n}={render(values[n], n)}" for n in keyed)
            if skip:
                return head + _owner(names[0], values[names[0]]) + rendered
            return head + rendered

        return auto_key

    if not isinstance(key, str):
        raise ConfigurationError(f"key= must be a str template or a callable, not {key!r}")
    fields = _template_fields(key)
    unknown = [f for f in fields if f not in sig.parameters]
    if unknown:
        raise ConfigurationError(
            f"key template {key!r} names {', '.join(unknown)}, which "
            f"{func.__qualname__}() has no parameter for (it has: {', '.join(names)})"
        )
    template = key
    # The hot case -- every parameter passed positionally -- skips binding: the template
    # is compiled to positional fields that index the call's args directly.
    compiled = "".join(
        literal.replace("{", "{{").replace("}", "}}")
        + ("" if field is None else "{" + str(fields.index(field)) + "}")
        for literal, field, _, _ in string.Formatter().parse(template)
    )
    positions = [names.index(f) for f in fields]
    n_params = len(names)

    def template_key(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        if simple and not kwargs and len(args) == n_params:
            return compiled.format(
                *[render(args[i], f) for i, f in zip(positions, fields, strict=True)]
            )
        values = bind(args, kwargs)
        return template.format_map({f: render(values[f], f) for f in fields})

    return template_key
