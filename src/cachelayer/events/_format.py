"""The invalidation event: its JSON payload, its limits and the checks a reader makes.

Pure code, no I/O: building a payload, and turning ``(payload, kid, signature)`` into an
:class:`Event` or the reason it is refused. docs/events.md is the specification; a
reader in another language follows it, not this file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._refused import REASONS, Refused
from ._signing import Verifier

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_ITEMS",
    "MAX_PAYLOAD_BYTES",
    "REASONS",
    "VERSION",
    "Event",
    "Refused",
    "check",
    "dead_letter_for",
    "encode",
    "parse",
    "seen_key",
    "stream_for",
]

VERSION = 1
#: most keys + tags one event names
MAX_ITEMS = 1000
#: the largest payload, in bytes (refused before it is parsed)
MAX_PAYLOAD_BYTES = 64 * 1024
#: seconds either side of now an event's ``ts`` may lie
DEFAULT_WINDOW = 300.0
#: the largest ``origin``, in characters
MAX_ORIGIN = 256
#: ``ts`` is a JSON integer JavaScript reads exactly (< 2^53)
MAX_TS = 2**53 - 1

ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Event:
    """One invalidation: the keys to delete and the tags to invalidate in ``ns``.

    Attributes:
        id: unique per event (``[A-Za-z0-9_.-]``, 1-64 characters); replays are refused
            by it.
        ns: the namespace (a Cache's ``namespace``).
        keys: logical keys, as passed to ``cache.delete``.
        tags: tags, as passed to ``cache.invalidate_tags``.
        origin: who sent it (free text for logs and dead letters; not trusted).
        ts: when it was made, ms since the Unix epoch (sender's clock).
    """

    id: str
    ns: str
    keys: tuple[str, ...]
    tags: tuple[str, ...]
    origin: str
    ts: int


def stream_for(namespace: str) -> str:
    """The default stream of a namespace: ``{<namespace>:}events`` (its own Cluster slot,
    beside the namespace's other per-namespace keys, spelt by no cache key)."""
    return "{" + namespace + ":}events"


def dead_letter_for(stream: str) -> str:
    """The dead-letter stream of ``stream`` (same hash tag, same Cluster slot)."""
    return stream + ":dead"


def seen_key(prefix: str, event_id: str) -> str:
    """The key marking ``event_id`` applied, under a Cache's key prefix (``shop:v1:`` ->
    ``{shop:v1:}events:seen:<id>``): the slot of the namespace's tag keys."""
    return "{" + prefix + "}events:seen:" + event_id


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{what} is a list of str, not a {type(value).__name__}")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} holds a {type(name).__name__}; each is a str")
        if not name:
            raise ValueError(f"{what} holds an empty string")
    return names


def encode(event: Event) -> bytes:
    """The payload of ``event``: compact JSON, ASCII (non-ASCII as ``\\u`` escapes).

    Raises:
        TypeError: keys or tags are not strings.
        ValueError: a field breaks the format's rules or limits (docs/events.md).
    """
    keys, tags = _names(event.keys, "keys"), _names(event.tags, "tags")
    if not keys and not tags:
        raise ValueError("an event names at least one key or tag")
    if len(keys) + len(tags) > MAX_ITEMS:
        raise ValueError(
            f"an event names at most {MAX_ITEMS} keys and tags; split this one "
            f"({len(keys) + len(tags)})"
        )
    if not ID_RE.fullmatch(event.id):
        raise ValueError("an event id is 1-64 characters of [A-Za-z0-9_.-]")
    if not NAME_RE.fullmatch(event.ns):
        raise ValueError("a namespace is [A-Za-z0-9_.-]+")
    if not isinstance(event.origin, str) or len(event.origin) > MAX_ORIGIN:
        raise ValueError(f"origin is a str of at most {MAX_ORIGIN} characters")
    if type(event.ts) is not int or not 0 <= event.ts <= MAX_TS:
        raise ValueError("ts is an int of ms since the epoch")
    body = {
        "v": VERSION,
        "id": event.id,
        "ns": event.ns,
        "keys": list(keys),
        "tags": list(tags),
        "origin": event.origin,
        "ts": event.ts,
    }
    payload = json.dumps(body, separators=(",", ":")).encode("ascii")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"the event's payload is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}; "
            "split it into several events"
        )
    return payload


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Parsers disagree on which duplicate wins; a signed payload must mean one thing.
        raise ValueError("duplicate member")
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Refused("malformed")
    return tuple(value)


def parse(payload: bytes) -> Event:
    """The event a payload holds (without checking signature, namespace or time).

    Raises:
        Refused: ``oversized``, ``malformed`` or ``version``.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Refused("oversized")
    try:
        body = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Refused("malformed") from None
    if not isinstance(body, dict):
        raise Refused("malformed")
    version = body.get("v")
    if type(version) is not int:
        raise Refused("malformed")
    if version != VERSION:
        raise Refused("version")
    event_id, ns, origin, ts = body.get("id"), body.get("ns"), body.get("origin"), body.get("ts")
    keys, tags = _string_list(body.get("keys")), _string_list(body.get("tags"))
    if (
        not isinstance(event_id, str)
        or not ID_RE.fullmatch(event_id)
        or not isinstance(ns, str)
        or not NAME_RE.fullmatch(ns)
        or not isinstance(origin, str)
        or len(origin) > MAX_ORIGIN
        or type(ts) is not int
        or not 0 <= ts <= MAX_TS
        or not 1 <= len(keys) + len(tags) <= MAX_ITEMS
    ):
        raise Refused("malformed")
    return Event(id=event_id, ns=ns, keys=keys, tags=tags, origin=origin, ts=ts)


def check(
    payload: Any,
    kid: Any,
    signature: Any,
    verifier: Verifier,
    namespace: str,
    now_ms: int,
    window_ms: int,
) -> Event:
    """Every check a reader makes before applying an event, but the replay check (which
    needs the store): size, key id, signature, format, version, namespace, time.

    The signature is verified before the payload is parsed, so nothing an unkeyed sender
    wrote is ever parsed. Arguments come straight from the transport (a stream entry's
    fields, a request's body and headers), so their types are checked here too.

    Raises:
        Refused: with the first reason that applies, in that order.
    """
    if not isinstance(payload, bytes) or not isinstance(kid, str | bytes):
        raise Refused("malformed")
    if not isinstance(signature, str | bytes):
        raise Refused("malformed")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Refused("oversized")
    verifier.verify(payload, kid, signature)
    event = parse(payload)
    if event.ns != namespace:
        raise Refused("namespace")
    if abs(event.ts - now_ms) > window_ms:
        raise Refused("expired")
    return event
