"""The read path, written once: generators that yield the steps they need.

``read_through`` decides everything about a cache-aside read: fresh hit, early refresh,
stale hit, tag check, negative hit, corrupt entry, miss, in-process single-flight,
lease, wait for another process's fill, load, guarded fill. It yields each step as a
tuple ``(name, *args)``:

- a store method (``"get"``, ``"get_many"``, ``"add"``, ``"fill"``, ``"delete"``), whose
  result is sent back, or :data:`FAILED` when the store failed (never an exception);
- ``LOAD``: call the loader; its value is sent back, or its exception thrown in;
- ``("sleep", seconds)``, ``("flight", key)``, ``("publish", raw, trusted)``,
  ``("refresh", key, flow)``: waiting, single-flight and background refresh, which only
  the shell can do in its own flavour (threads or asyncio).

The Cache's sync shell runs the steps with blocking calls, its async shell with
``await``; neither knows the algorithm, so it cannot drift between the two.
See docs/architecture.md and docs/consistency.md.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._envelope import Entry
from ._keys import derived_key
from ._policy import TtlSpec
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = [
    "FAILED",
    "LEAD",
    "LOAD",
    "ErrorPolicy",
    "Flow",
    "ReadOptions",
    "lease_key",
    "plain_get",
    "read_through",
    "refresh",
]


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Sent into a flow in place of the result of a store step that failed.
FAILED: Any = _Marker("FAILED")
#: Sent back for ``("flight", key)`` when this caller leads the load.
LEAD: Any = _Marker("LEAD")
#: Yielded by a flow when it wants the loader called.
LOAD = ("load",)

Flow = Generator[tuple[Any, ...], Any, Any]

LEASE_SUFFIX = "lease"
# Entry states, in order of preference.
FRESH, EARLY, STALE, STALE_IF_ERROR, DEAD = range(5)


def lease_key(key: str) -> str:
    """The lease key of a value key (same Redis Cluster slot)."""
    return derived_key(key, LEASE_SUFFIX)


class ErrorPolicy:
    """Negative caching: which loader exceptions are cached, and for how long.

    Args:
        ttls: exception type -> seconds (``{NotFound: 30}``). The first type the raised
            exception is an instance of wins.

    The stored entry names the matched type and holds the exception's args when the codec
    can store them. Only the types configured here are ever rebuilt from a stored name.
    """

    def __init__(self, ttls: Mapping[type[BaseException], float]) -> None:
        self.ttls: dict[type[BaseException], float] = {}
        for exc_type, ttl in ttls.items():
            if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
                raise ConfigurationError(
                    f"cache_errors keys must be Exception subclasses, not {exc_type!r}"
                )
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
                raise ConfigurationError(
                    f"cache_errors[{exc_type.__name__}]={ttl!r} must be seconds > 0"
                )
            self.ttls[exc_type] = float(ttl)
        self._by_name = {self.name(t): t for t in self.ttls}

    @staticmethod
    def name(exc_type: type[BaseException]) -> str:
        return f"{exc_type.__module__}.{exc_type.__qualname__}"

    def match(self, exc: BaseException) -> type[BaseException] | None:
        for exc_type in self.ttls:
            if isinstance(exc, exc_type):
                return exc_type
        return None

    def rebuild(self, stored: Any) -> BaseException | None:
        """The exception a negative entry stands for, or None if it is not one of ours."""
        if not (isinstance(stored, dict) and isinstance(stored.get("args"), list)):
            return None
        exc_type = self._by_name.get(stored.get("error"))  # type: ignore[arg-type]
        if exc_type is None:
            return None
        try:
            return exc_type(*stored["args"])
        except Exception:
            try:
                return exc_type()
            except Exception:
                return None


class ReadOptions:
    """How one cached function (or one ``get_or_load`` call) reads and refreshes.

    Args:
        ttl: freshness: seconds, a TTL class, ``None`` (never expires) or DEFAULT.
        errors: negative caching, or None.
        stale_ttl: seconds an expired value is still served (at once) while one
            background refresh runs (stale-while-revalidate).
        stale_if_error: seconds after expiry during which, if the load fails, the expired
            value is returned instead of the error.
        early_refresh: XFetch's beta; a hit refreshes in the background with a
            probability that rises as expiry nears, more eagerly for slow loads. 0 = off.
    """

    __slots__ = ("early_refresh", "errors", "keep", "stale_if_error", "stale_ttl", "ttl")

    def __init__(
        self,
        ttl: TtlSpec,
        errors: ErrorPolicy | None = None,
        stale_ttl: float = 0.0,
        stale_if_error: float = 0.0,
        early_refresh: float = 1.0,
    ) -> None:
        for name, value in (
            ("stale_ttl", stale_ttl),
            ("stale_if_error", stale_if_error),
            ("early_refresh", early_refresh),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{name}={value!r} must be a number >= 0")
        self.ttl = ttl
        self.errors = errors
        self.stale_ttl = float(stale_ttl)
        self.stale_if_error = float(stale_if_error)
        self.early_refresh = float(early_refresh)
        #: seconds an entry stays in the store after it stops being fresh
        self.keep = max(self.stale_ttl, self.stale_if_error)


def classify(entry: Entry, now_ms: int, options: ReadOptions, rng: float) -> int:
    """The state of an entry at ``now_ms``; ``rng`` is uniform in [0, 1)."""
    fresh_until = entry.fresh_until_ms
    if not fresh_until:
        return FRESH
    if now_ms < fresh_until:
        beta = options.early_refresh
        # XFetch: refresh when now - delta * beta * ln(U) >= expiry, U uniform in (0, 1].
        if (
            beta
            and entry.duration_ms
            and not entry.negative
            and now_ms - entry.duration_ms * beta * math.log(1.0 - rng) >= fresh_until
        ):
            return EARLY
        return FRESH
    if entry.negative:
        return DEAD
    over = (now_ms - fresh_until) / 1000.0
    if over < options.stale_ttl:
        return STALE
    if over < options.stale_if_error:
        return STALE_IF_ERROR
    return DEAD


def _tags_hold(entry: Entry, tokens: Mapping[str, bytes] | None) -> bool:
    """Is every tag the entry was computed under still at the same token?"""
    if not entry.tags:
        return True
    if tokens is None:
        return False
    return all(tokens.get(key) == token for key, token in entry.tags)


def _fetch(key: str, tag_keys: Sequence[str]) -> Generator[tuple[Any, ...], Any, Any]:
    """Read the value and the current tokens of its tags in one round trip."""
    if not tag_keys:
        raw = yield ("get", key)
        return raw, None
    raws = yield ("get_many", [key, *tag_keys])
    if raws is FAILED:
        return FAILED, None
    return raws[0], {k: t or b"" for k, t in zip(tag_keys, raws[1:], strict=True)}


def _tag_tokens(tokens: Mapping[str, bytes] | None) -> list[tuple[str, bytes]]:
    return list(tokens.items()) if tokens else []


def _cached_error(entry: Entry, options: ReadOptions) -> BaseException | None:
    """The exception a negative entry stands for (None: not one this reader caches)."""
    return options.errors.rebuild(entry.value) if options.errors is not None else None


def _usable(
    cache: Cache, raw: bytes, tokens: Mapping[str, bytes] | None, options: ReadOptions
) -> Entry | None:
    """A fresh entry whose tags hold and that this reader can answer with, or None."""
    entry = cache._decode(raw)
    if entry is None or not _tags_hold(entry, tokens):
        return None
    if classify(entry, cache._now_ms(), options, 0.0) != FRESH:
        return None
    if entry.negative and _cached_error(entry, options) is None:
        return None
    return entry


def _serve(entry: Entry, options: ReadOptions) -> Generator[tuple[Any, ...], Any, Any]:
    """Answer with an entry another caller filled: share it with our followers."""
    if entry.negative:
        exc = _cached_error(entry, options)
        assert exc is not None
        raise exc
    yield ("publish", entry.raw, True)
    return entry.value


def first_look(
    cache: Cache, raw: Any, tokens: Mapping[str, bytes] | None, options: ReadOptions
) -> tuple[Entry | None, int]:
    """Decode what the first read found and classify it (pure: no I/O).

    Returns ``(entry, state)``; ``(None, DEAD)`` when absent, failed, corrupt or when a tag
    changed. A caller holding ``state == FRESH`` for a positive entry has a plain hit.
    """
    if raw is None or raw is FAILED:
        return None, DEAD
    entry = cache._decode(raw)
    if entry is None or not _tags_hold(entry, tokens):
        return None, DEAD
    return entry, classify(entry, cache._now_ms(), options, cache._rng())


def read_through(
    cache: Cache,
    key: str,
    options: ReadOptions,
    tag_keys: Sequence[str] = (),
    first: tuple[Any, Entry | None, int] | None = None,
) -> Flow:
    """Cache-aside for one store key: return the cached value or load, fill and return.

    Guarantees (docs/consistency.md): a fill happens only under a lease taken at the miss
    and only if no write, delete or invalidation of the key voided that lease meanwhile;
    an entry computed before one of its tags was invalidated is never served; in-process
    callers that arrive during a load share it; other processes wait up to
    ``cache.lease_wait`` for the lease holder's fill. A failing store is skipped: the
    loader's value is returned and nothing raises.

    ``first`` is ``(raw, entry, state)`` when the caller already read the key and looked
    at it with :func:`first_look` (the decorator's fast path for untagged hits).
    """
    stats = cache.stats
    if first is None:
        raw, tokens = yield from _fetch(key, tag_keys)
        entry, state = first_look(cache, raw, tokens, options)
    else:
        raw, entry, state = first
        tokens = None
    stale: Entry | None = None
    if entry is not None:
        if entry.negative:
            exc = _cached_error(entry, options) if state == FRESH else None
            if exc is not None:
                stats.negative_hits += 1
                raise exc
        elif state == FRESH:
            stats.hits += 1
            return entry.value
        elif state <= STALE:
            yield ("refresh", key, refresh(cache, key, options, tag_keys))
            if state == EARLY:
                stats.hits += 1
                stats.early_refreshes += 1
            else:
                stats.stale_hits += 1
            return entry.value
        elif state == STALE_IF_ERROR:
            stale = entry
    stats.misses += 1

    flight = yield ("flight", key)
    if flight is not LEAD and flight.trusted:
        # Another caller in this process was loading this key; it finished: share its
        # outcome (a fresh copy of the value, or the same exception) -- unless one of the
        # value's tags was invalidated after the leader read the tokens and before this
        # caller did: then the value predates a write this caller must see.
        if flight.raw is None:  # a failure that stored nothing is shared as it is
            stats.flight_joins += 1
            assert flight.error is not None
            raise flight.error
        # A value, or a cached error (negative entry), checked alike.
        entry = cache._decode(flight.raw)
        if entry is not None and _tags_hold(entry, tokens):
            if not entry.negative:
                stats.flight_joins += 1
                return entry.value
            exc = _cached_error(entry, options)
            if exc is not None:
                stats.flight_joins += 1
                raise exc
    # (an untrusted outcome -- the leader's fill was refused, so its value may predate an
    # invalidation -- is not shared: this caller reads for itself.)

    lease = lease_key(key)
    token: bytes | None = None
    trusted = raw is FAILED  # with the store down there is no cache to be stale against
    if raw is not FAILED:
        token = os.urandom(16)
        got: Any = None
        if raw is None and not tag_keys:
            # One atomic step: a value filled since our miss is returned, else the lease.
            got = yield ("lease", key, lease, token, cache.lease_ttl)
            if isinstance(got, bytes):
                entry = _usable(cache, got, None, options)
                if entry is not None:
                    stats.lease_waits += 1
                    return (yield from _serve(entry, options))
                got = None
        if got is None:
            got = yield ("add", lease, token, cache.lease_ttl)
        if got is not True:
            token = None
            trusted = got is FAILED
        if got is False and stale is not None:
            # Within stale_if_error another caller is loading (or its load just failed and
            # its lease throttles retries): the expired value now beats waiting for it.
            stats.stale_hits += 1
            yield ("publish", stale.raw, True)
            return stale.value
        if got is False:
            # Another process holds the lease and is loading: wait for its fill.
            waited, delay = 0.0, 0.002
            while waited < cache.lease_wait:
                yield ("sleep", delay)
                waited += delay
                delay = min(delay * 2, 0.05)
                if not tag_keys:
                    # The holder's fill, or -- if an invalidation voided the holder's
                    # lease, so no fill will come -- the lease for us, in one step.
                    mine = os.urandom(16)
                    raw2 = yield ("lease", key, lease, mine, cache.lease_ttl)
                    if raw2 is True:
                        token = mine  # we load and fill; the outcome rests on our fill
                        break
                    tokens2 = None
                    if raw2 is False:
                        continue
                else:
                    raw2, tokens2 = yield from _fetch(key, tag_keys)
                if raw2 is FAILED:
                    break
                entry = _usable(cache, raw2, tokens2, options) if raw2 is not None else None
                if entry is not None:
                    stats.lease_waits += 1
                    return (yield from _serve(entry, options))
                if tag_keys:
                    # No usable value: the holder's fill has not landed, or it landed and
                    # a tag moved since (a write), so no fill will come. Take the lease
                    # if the holder is done with it, and load under the tokens just read.
                    mine = os.urandom(16)
                    got = yield ("add", lease, mine, cache.lease_ttl)
                    if got is FAILED:
                        break
                    if got is True:
                        token, tokens = mine, tokens2
                        break
            else:
                stats.lease_timeouts += 1
            # Without the lease we load without filling: our load may predate an
            # invalidation.

    stats.loads += 1
    started = time.perf_counter()
    try:
        value = yield LOAD
    except Exception as exc:
        stats.load_errors += 1
        if stale is not None:
            # stale-if-error: the expired value beats an error page. The lease is kept
            # until it expires, so a failing database is retried once per lease_ttl.
            stats.stale_on_error += 1
            yield ("publish", stale.raw, True)
            return stale.value
        errors = options.errors
        exc_type = errors.match(exc) if errors is not None else None
        if token is not None:
            if exc_type is None:
                yield ("delete", [lease])  # let the next caller fill without waiting
            else:
                assert errors is not None
                seconds = cache._ttl.resolve(errors.ttls[exc_type])
                # A cached error carries the tags too: invalidating them drops it.
                payload = cache._encode_negative(exc_type, exc, seconds, _tag_tokens(tokens))
                filled = yield ("fill", key, payload, seconds, lease, token)
                # Followers take it as they take a value: only if the fill was accepted
                # and no tag of theirs moved since (a write may have created the row).
                yield ("publish", payload, filled is True)
        raise
    duration_ms = int((time.perf_counter() - started) * 1000)
    seconds = cache._ttl.resolve(options.ttl)
    try:
        payload = cache._encode(value, seconds, duration_ms, tags=_tag_tokens(tokens))
    except Exception:  # TypeError mostly; ValueError, RecursionError for odd values
        if token is not None:
            yield ("delete", [lease])
        raise
    if token is not None:
        filled = yield ("fill", key, payload, cache._store_ttl(seconds, options), lease, token)
        if filled is True:
            stats.fills += 1
            trusted = True
        elif filled is False:
            stats.fills_rejected += 1
        else:
            trusted = True  # the store failed at the fill: no cache, nothing stale
    yield ("publish", payload, trusted)
    return value


def refresh(cache: Cache, key: str, options: ReadOptions, tag_keys: Sequence[str]) -> Flow:
    """A background refresh: under a lease (one refresh across all processes), load and
    fill. Errors are counted and logged, never raised (nobody is waiting for them)."""
    stats = cache.stats
    lease = lease_key(key)
    token = os.urandom(16)
    if (yield ("add", lease, token, cache.lease_ttl)) is not True:
        return None  # another caller refreshes it (or the store is failing)
    tokens: dict[str, bytes] | None = None
    if tag_keys:
        raws = yield ("get_many", list(tag_keys))
        if raws is FAILED:
            return None
        tokens = {k: t or b"" for k, t in zip(tag_keys, raws, strict=True)}
    stats.refreshes += 1
    started = time.perf_counter()
    try:
        value = yield LOAD
        duration_ms = int((time.perf_counter() - started) * 1000)
        seconds = cache._ttl.resolve(options.ttl)
        payload = cache._encode(value, seconds, duration_ms, tags=_tag_tokens(tokens))
    except Exception as exc:
        # The lease stays until it expires: a failing loader is retried once per lease_ttl.
        stats.refresh_errors += 1
        cache._log_refresh_error(exc)
        return None
    filled = yield ("fill", key, payload, cache._store_ttl(seconds, options), lease, token)
    if filled is True:
        stats.fills += 1
    elif filled is False:
        stats.fills_rejected += 1
    return None


def plain_get(cache: Cache, keys: Sequence[str]) -> Flow:
    """``get``/``get_many``: the fresh values among ``keys`` (a tagged entry's tags are
    checked with one more round trip); returns a list with FAILED for misses."""
    if len(keys) == 1:
        raw = yield ("get", keys[0])
        raws = FAILED if raw is FAILED else [raw]
    else:
        raws = yield ("get_many", list(keys))
    if raws is FAILED:
        cache.stats.misses += len(keys)
        return [FAILED] * len(keys)
    now = cache._now_ms()
    entries: list[Entry | None] = []
    for raw in raws:
        entry = cache._decode(raw) if raw is not None else None
        live = (
            entry is not None
            and not entry.negative
            and classify(entry, now, _PLAIN, 0.0) in (FRESH, EARLY)
        )
        entries.append(entry if live else None)
    tag_keys = sorted({k for e in entries if e is not None for k, _ in e.tags})
    tokens: dict[str, bytes] | None = None
    if tag_keys:
        found = yield ("get_many", tag_keys)
        if found is not FAILED:
            tokens = {k: t or b"" for k, t in zip(tag_keys, found, strict=True)}
    values = []
    for entry in entries:
        if entry is not None and _tags_hold(entry, tokens):
            cache.stats.hits += 1
            values.append(entry.value)
        else:
            cache.stats.misses += 1
            values.append(FAILED)
    return values


_PLAIN = ReadOptions(ttl=None, early_refresh=0.0)
