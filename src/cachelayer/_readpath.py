"""The read path, written once: flows that yield the steps they need (``_steps.py``).

``read_through`` is cache-aside for one key, in four stages a reader can take one at a
time, each a small sub-generator with a typed result:

1. **look** (:func:`first_look`, pure): what the first read found -- a fresh hit, an
   early refresh, a stale hit, a cached error, or a miss (absent, failed, corrupt, or
   computed before one of its tags moved);
2. **join** (:func:`_join_flight`): a caller of this process already loading the key
   shares its outcome, if it may;
3. **claim** (:func:`_claim`): take the key's lease -- or find the value someone filled
   since the miss, or wait for the lease holder's fill (:func:`_wait_untagged`,
   :func:`_wait_tagged`), or go on without a lease when the store fails or the wait
   times out -- giving a :class:`Claim`, or a :class:`Served` answer;
4. **load and fill** (:func:`_load_and_fill`): call the loader and fill under the lease.

The sync shell runs the steps with blocking calls, the async shell with ``await``;
neither knows the algorithm, so it cannot drift between the two. ``refresh`` is the
background refresh, ``plain_get`` the flow of ``get``/``get_many``. See
docs/architecture.md and docs/consistency.md.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from . import _hooks as hooks
from ._engine import Engine, lease_key
from ._envelope import Entry
from ._options import Fresh, ReadOptions
from ._steps import (
    FAILED,
    LEAD,
    LOAD,
    Add,
    Delete,
    DeleteIf,
    Fill,
    Flow,
    Get,
    GetMany,
    JoinFlight,
    KeepLocal,
    Lease,
    Publish,
    Refresh,
    Sleep,
    Step,
    Swap,
    delays,
)
from .errors import ValueTooLarge

__all__ = [
    "DEAD",
    "EARLY",
    "FRESH",
    "STALE",
    "STALE_IF_ERROR",
    "Claim",
    "Served",
    "classify",
    "first_look",
    "plain_get",
    "read_through",
    "refresh",
    "warm",
]

# Entry states, in order of preference.
FRESH, EARLY, STALE, STALE_IF_ERROR, DEAD = range(5)

# Outcomes of a refresh or a warm-up of one key.
LOADED = "loaded"  # loaded and filled
FRESH_HIT = "fresh"  # already held a fresh value: nothing loaded
BUSY = "busy"  # another caller holds the lease (it is loading the key)
SUPERSEDED = "superseded"  # loaded, but a write or invalidation came first: not filled
FAILED_LOAD = "failed"  # the loader raised (counted and logged, not raised)
UNAVAILABLE = "unavailable"  # the store failed

#: What a stage that may answer by itself gives back when it did not.
Stage = Generator[Step, Any, "Served | None"]


class Served:
    """A stage answered the read: ``value`` goes to the caller."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Claim:
    """What the claim stage leaves the load with.

    ``token``: the lease this caller holds (None: it loads without filling).
    ``tokens``: the tag tokens the value will be stamped with.
    ``trusted``: followers may share the loaded value even without a fill (the store
    failed, so there is no cache the value could be stale against).
    ``orphan``: a token a lease step that failed may still have set (its reply timed
    out): the lease is given back in the background after the load.
    """

    __slots__ = ("orphan", "token", "tokens", "trusted")

    def __init__(
        self,
        token: bytes | None,
        tokens: Mapping[str, bytes] | None,
        trusted: bool,
        orphan: bytes | None = None,
    ) -> None:
        self.token, self.tokens, self.trusted = token, tokens, trusted
        self.orphan = orphan


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


def _tokens(tag_keys: Sequence[str], raws: Sequence[bytes | None]) -> dict[str, bytes]:
    return {k: t or b"" for k, t in zip(tag_keys, raws, strict=True)}


def _fetch(
    key: str, tag_keys: Sequence[str]
) -> Generator[Step, Any, tuple[Any, dict[str, bytes] | None]]:
    """Read the value and the current tokens of its tags in one round trip."""
    if not tag_keys:
        raw = yield Get(key)
        return raw, None
    raws = yield GetMany([key, *tag_keys])
    if raws is FAILED:
        return FAILED, None
    return raws[0], _tokens(tag_keys, raws[1:])


def _stamp(tokens: Mapping[str, bytes] | None) -> list[tuple[str, bytes]]:
    return list(tokens.items()) if tokens else []


def _cached_error(entry: Entry, options: ReadOptions) -> BaseException | None:
    """The exception a negative entry stands for (None: not one this reader caches)."""
    return options.errors.rebuild(entry.value) if options.errors is not None else None


def _usable(
    engine: Engine,
    key: str,
    raw: bytes,
    tokens: Mapping[str, bytes] | None,
    options: ReadOptions,
) -> Entry | None:
    """A fresh entry whose tags hold and that this reader can answer with, or None."""
    entry = engine.decode(raw, key=key)
    if entry is None or not _tags_hold(entry, tokens):
        return None
    if classify(entry, engine.now_ms(), options, 0.0) != FRESH:
        return None
    if entry.negative and _cached_error(entry, options) is None:
        return None
    return entry


def _serve(engine: Engine, entry: Entry, options: ReadOptions) -> Generator[Step, Any, Served]:
    """Answer with an entry another caller filled, and share it with our followers."""
    engine.stats.lease_waits += 1
    if entry.negative:
        exc = _cached_error(entry, options)
        assert exc is not None
        raise exc
    yield Publish(entry.raw, True)
    return Served(entry.value)


def first_look(
    engine: Engine,
    raw: Any,
    tokens: Mapping[str, bytes] | None,
    options: ReadOptions,
    *,
    key: str,
) -> tuple[Entry | None, int]:
    """Decode what the first read found and classify it (pure: no I/O).

    Returns ``(entry, state)``; ``(None, DEAD)`` when absent, failed, corrupt or when a tag
    changed. A caller holding ``state == FRESH`` for a positive entry has a plain hit.
    """
    if raw is None or raw is FAILED:
        return None, DEAD
    entry = engine.decode(raw, key=key)
    if entry is None or not _tags_hold(entry, tokens):
        return None, DEAD
    return entry, classify(entry, engine.now_ms(), options, engine.random())


def read_through(
    engine: Engine,
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
    ``engine.lease_wait`` for the lease holder's fill. A failing store is skipped: the
    loader's value is returned and nothing raises.

    ``first`` is ``(raw, entry, state)`` when the caller already read the key and looked
    at it with :func:`first_look` (the decorator's fast path for untagged hits).
    """
    stats = engine.stats
    tokens: dict[str, bytes] | None = None
    if first is None:
        raw, tokens = yield from _fetch(key, tag_keys)
        entry, state = first_look(engine, raw, tokens, options, key=key)
    else:
        raw, entry, state = first
    stale: Entry | None = None
    if entry is not None:
        if entry.negative:
            exc = _cached_error(entry, options) if state == FRESH else None
            if exc is not None:
                stats.negative_hits += 1
                raise exc
        elif state == FRESH:
            stats.hits += 1
            if engine.local is not None:
                yield KeepLocal(key, entry, engine.now_ms())
            return entry.value
        elif state <= STALE:
            yield Refresh(key, refresh(engine, key, options, tag_keys))
            if state == EARLY:
                stats.hits += 1
                stats.early_refreshes += 1
            else:
                stats.stale_hits += 1
            return entry.value
        elif state == STALE_IF_ERROR:
            stale = entry
    stats.misses += 1
    shared = yield from _join_flight(engine, key, options, tokens)
    if shared is not None:
        return shared.value
    claim = yield from _claim(engine, key, options, tag_keys, raw, tokens, stale)
    if isinstance(claim, Served):
        return claim.value
    return (yield from _load_and_fill(engine, key, options, claim, stale))


def _join_flight(
    engine: Engine, key: str, options: ReadOptions, tokens: Mapping[str, bytes] | None
) -> Stage:
    """Stage 2: share the outcome of a load of this key already running in the process."""
    flight = yield JoinFlight(key)
    if flight is LEAD or not flight.trusted:
        # We lead; or the leader's fill was refused, so its value may predate an
        # invalidation: this caller reads for itself.
        return None
    stats = engine.stats
    if flight.raw is None:  # a failure that stored nothing is shared as it is
        stats.flight_joins += 1
        assert flight.error is not None
        raise flight.error
    # A value, or a cached error (negative entry), checked alike: not shared if one of
    # its tags was invalidated after the leader read the tokens and before we did.
    entry = engine.decode(flight.raw, key=key)
    if entry is None or not _tags_hold(entry, tokens):
        return None
    if not entry.negative:
        stats.flight_joins += 1
        return Served(entry.value)
    exc = _cached_error(entry, options)
    if exc is None:
        return None
    stats.flight_joins += 1
    raise exc


def _claim(
    engine: Engine,
    key: str,
    options: ReadOptions,
    tag_keys: Sequence[str],
    raw: Any,
    tokens: dict[str, bytes] | None,
    stale: Entry | None,
) -> Generator[Step, Any, Claim | Served]:
    """Stage 3: take the lease, or find an answer, or decide to load without one."""
    if raw is FAILED:  # with the store down there is no cache to be stale against
        return Claim(None, tokens, trusted=True)
    lease = lease_key(key)
    token = os.urandom(16)
    got: Any = None
    if raw is None and not tag_keys:
        # One atomic step: a value filled since our miss is returned, else the lease.
        got = yield Lease(key, lease, token, engine.lease_ttl)
        if isinstance(got, bytes):
            entry = _usable(engine, key, got, None, options)
            if entry is not None:
                return (yield from _serve(engine, entry, options))
            got = None
    if got is None:
        got = yield Add(lease, token, engine.lease_ttl)
    if got is True:
        return Claim(token, tokens, trusted=False)
    if got is FAILED:
        return Claim(None, tokens, trusted=True, orphan=token)
    # Another caller holds the lease and is loading.
    if stale is not None:
        # Within stale_if_error the expired value now beats waiting for its load (or for
        # its failed load's lease, which throttles retries).
        engine.stats.stale_hits += 1
        yield Publish(stale.raw, True)
        return Served(stale.value)
    if engine.gave_up_recently(key):
        # A caller of this process just waited out this lease: no fill is coming.
        return Claim(None, tokens, trusted=False)
    if tag_keys:
        return (yield from _wait_tagged(engine, key, options, tag_keys, tokens))
    return (yield from _wait_untagged(engine, key, options))


def _wait_untagged(
    engine: Engine, key: str, options: ReadOptions
) -> Generator[Step, Any, Claim | Served]:
    """Wait for the lease holder's fill of an untagged key.

    Each poll is one atomic ``lease`` step: the holder's value, or -- when an
    invalidation voided the holder's lease, so no fill will come -- the lease for us.
    """
    lease = lease_key(key)
    orphan = None
    for delay in delays(engine.lease_wait):
        yield Sleep(delay)
        mine = os.urandom(16)
        got = yield Lease(key, lease, mine, engine.lease_ttl)
        if got is True:
            return Claim(mine, None, trusted=False)
        if got is FAILED:
            orphan = mine
            break
        if isinstance(got, bytes):
            entry = _usable(engine, key, got, None, options)
            if entry is not None:
                return (yield from _serve(engine, entry, options))
    else:
        engine.stats.lease_timeouts += 1
        engine.gave_up(key)
    # Without the lease we load without filling: our load may predate an invalidation.
    return Claim(None, None, trusted=False, orphan=orphan)


def _wait_tagged(
    engine: Engine,
    key: str,
    options: ReadOptions,
    tag_keys: Sequence[str],
    tokens: dict[str, bytes] | None,
) -> Generator[Step, Any, Claim | Served]:
    """Wait for the lease holder's fill of a tagged key.

    Each poll reads the value with its tags' tokens. No usable value means the holder's
    fill has not landed, or it landed and a tag moved since (a write), so no fill will
    come: then take the lease if the holder is done with it, and load under the tokens
    just read.
    """
    lease = lease_key(key)
    orphan = None
    for delay in delays(engine.lease_wait):
        yield Sleep(delay)
        raw, now_tokens = yield from _fetch(key, tag_keys)
        if raw is FAILED:
            break
        entry = _usable(engine, key, raw, now_tokens, options) if raw is not None else None
        if entry is not None:
            return (yield from _serve(engine, entry, options))
        mine = os.urandom(16)
        got = yield Add(lease, mine, engine.lease_ttl)
        if got is FAILED:
            orphan = mine
            break
        if got is True:
            return Claim(mine, now_tokens, trusted=False)
    else:
        engine.stats.lease_timeouts += 1
        engine.gave_up(key)
    return Claim(None, tokens, trusted=False, orphan=orphan)


def _load_and_fill(
    engine: Engine, key: str, options: ReadOptions, claim: Claim, stale: Entry | None
) -> Flow:
    """Stage 4: call the loader; fill under the lease (a cached error too); publish.

    A lease this caller holds, or may hold, is never left behind for its full
    ``lease_ttl`` by a store that failed at the wrong moment (every miss on the key would
    wait ``lease_wait`` for a fill that will not come): when the fill or the lease's
    release failed, or the lease step itself failed after maybe setting it, a background
    job gives it back (:func:`_give_back`).
    """
    orphans = [claim.orphan] if claim.orphan is not None else []
    try:
        value = yield from _load_fill(engine, key, options, claim, stale, orphans)
    except Exception:
        yield from _give_back(key, orphans)
        raise
    yield from _give_back(key, orphans)
    return value


def _give_back(key: str, orphans: list[bytes]) -> Flow:
    """Release in the background the lease of ``key`` if it still holds one of these
    tokens (a delete-if-equal: a lease someone else took since is left alone)."""
    if orphans:
        yield Refresh(lease_key(key), _release(lease_key(key), orphans))


def _release(lease: str, tokens: list[bytes]) -> Flow:
    """Delete ``lease`` if it holds one of ``tokens``; a failing store is tried again a
    little later (a store that just failed may be back in a moment)."""
    for pause in (0.0, 0.5, 2.0):
        if pause:
            yield Sleep(pause)
        left = []
        for token in tokens:
            if (yield DeleteIf(lease, token)) is FAILED:
                left.append(token)
        if not left:
            return None
        tokens = left
    return None


def _load_fill(
    engine: Engine,
    key: str,
    options: ReadOptions,
    claim: Claim,
    stale: Entry | None,
    orphans: list[bytes],
) -> Flow:
    stats = engine.stats
    lease, token = lease_key(key), claim.token
    stats.loads += 1
    span = hooks.load_span
    started = time.perf_counter()
    try:
        if span is None:
            value = yield LOAD
        else:
            with span(engine.name, engine.keys.namespace):
                value = yield LOAD
    except Exception as exc:
        stats.load_seconds.observe(time.perf_counter() - started)
        stats.load_errors += 1
        if stale is not None:
            # stale-if-error: the expired value beats an error page. The lease is kept,
            # so a failing database is retried once per lease_ttl -- but no longer than
            # the stale value can be served: past that, callers would wait on it.
            stats.stale_on_error += 1
            if token is not None:
                window_end = stale.fresh_until_ms + int(options.stale_if_error * 1000)
                left = (window_end - engine.now_ms()) / 1000
                if left <= 0:
                    done = yield DeleteIf(lease, token)
                elif left < engine.lease_ttl:
                    done = yield Swap(lease, token, token, left)
                else:
                    done = True
                if done is FAILED:
                    orphans.append(token)
            yield Publish(stale.raw, True)
            return stale.value
        errors = options.errors
        exc_type = errors.match(exc) if errors is not None else None
        if token is not None:
            if exc_type is None:
                # Let the next caller fill without waiting.
                if (yield Delete([lease])) is FAILED:
                    orphans.append(token)
            else:
                assert errors is not None
                seconds = engine.ttl.resolve(errors.ttls[exc_type])
                # A cached error carries the tags too: invalidating them drops it.
                payload = engine.encode_error(
                    exc_type, exc, seconds, _stamp(claim.tokens), key=key
                )
                filled = yield Fill(key, payload, seconds, lease, token)
                if filled is FAILED:
                    orphans.append(token)
                # Followers take it as they take a value: only if the fill was accepted
                # and no tag of theirs moved since (a write may have created the row).
                yield Publish(payload, filled is True)
        raise
    took = time.perf_counter() - started
    stats.load_seconds.observe(took)
    duration_ms = int(took * 1000)
    value, seconds, keep = _freshness(engine, value, options)
    try:
        payload = engine.encode(value, seconds, duration_ms, tags=_stamp(claim.tokens), key=key)
    except ValueTooLarge:
        # Too large to store: the caller still gets its value (followers load their own).
        stats.oversized += 1
        engine.log_oversized()
        if token is not None and (yield Delete([lease])) is FAILED:
            orphans.append(token)
        return value
    except Exception:  # TypeError mostly; ValueError, RecursionError for odd values
        if token is not None and (yield Delete([lease])) is FAILED:
            orphans.append(token)
        raise
    trusted = claim.trusted
    if token is not None:
        kept = None if seconds is None else seconds + keep
        filled = yield Fill(key, payload, kept, lease, token)
        if filled is True:
            stats.fills += 1
            trusted = True
        elif filled is False:
            stats.fills_rejected += 1
        else:
            trusted = True  # the store failed at the fill: no cache, nothing stale
            orphans.append(token)
    yield Publish(payload, trusted)
    return value


def _freshness(
    engine: Engine, value: Any, options: ReadOptions
) -> tuple[Any, float | None, float]:
    """``(value, fresh seconds, seconds kept after that)`` for a loaded value: the call's
    TTL and stale window, or those the loader stated with :class:`~cachelayer.Fresh`."""
    if isinstance(value, Fresh):
        return value.value, engine.ttl.at_most(value.ttl), min(value.stale_ttl, options.keep)
    return value, engine.ttl.resolve(options.ttl), options.keep


def refresh(
    engine: Engine,
    key: str,
    options: ReadOptions,
    tag_keys: Sequence[str],
    release: bool = False,
) -> Flow:
    """A background refresh: under a lease (one refresh across all processes), load and
    fill. Errors are counted and logged, never raised (nobody is waiting for them).

    Returns the outcome (:data:`LOADED`, :data:`SUPERSEDED`, :data:`BUSY`,
    :data:`FAILED_LOAD` or :data:`UNAVAILABLE`), for a warm-up to count.
    """
    stats = engine.stats
    lease = lease_key(key)
    token = os.urandom(16)
    got = yield Add(lease, token, engine.lease_ttl)
    if got is not True:  # another caller refreshes it, or the store is failing
        return UNAVAILABLE if got is FAILED else BUSY
    tokens: dict[str, bytes] | None = None
    if tag_keys:
        raws = yield GetMany(list(tag_keys))
        if raws is FAILED:
            return UNAVAILABLE
        tokens = _tokens(tag_keys, raws)
    stats.refreshes += 1
    span = hooks.load_span
    started = time.perf_counter()
    try:
        try:
            if span is None:
                value = yield LOAD
            else:
                with span(engine.name, engine.keys.namespace):
                    value = yield LOAD
        finally:
            took = time.perf_counter() - started
            stats.load_seconds.observe(took)
        duration_ms = int(took * 1000)
        value, seconds, keep = _freshness(engine, value, options)
        payload = engine.encode(value, seconds, duration_ms, tags=_stamp(tokens), key=key)
    except Exception as exc:
        # A background refresh keeps the lease until it expires: a failing loader is
        # retried once per lease_ttl. A warm-up (``release``) gives it back: callers must
        # not wait on a load nobody is doing.
        stats.refresh_errors += 1
        engine.log_refresh_error(exc)
        if release:
            yield DeleteIf(lease, token)
        return FAILED_LOAD
    kept = None if seconds is None else seconds + keep
    filled = yield Fill(key, payload, kept, lease, token)
    if filled is True:
        stats.fills += 1
        return LOADED
    if filled is False:
        stats.fills_rejected += 1
        return SUPERSEDED
    return UNAVAILABLE


def warm(engine: Engine, key: str, options: ReadOptions, tag_keys: Sequence[str]) -> Flow:
    """Warm one key: nothing if it already holds a fresh value (its tags holding), else
    a :func:`refresh` -- under a lease, so a key another process is loading is left to
    it, and a fill never overwrites a newer write. Returns the outcome (:data:`FRESH_HIT`
    or one of :func:`refresh`'s)."""
    raw, tokens = yield from _fetch(key, tag_keys)
    if raw is FAILED:
        return UNAVAILABLE
    if raw is not None:
        entry = _usable(engine, key, raw, tokens, options)
        if entry is not None and not entry.negative:
            return FRESH_HIT
    return (yield from refresh(engine, key, options, tag_keys, release=True))


def plain_get(engine: Engine, keys: Sequence[str]) -> Flow:
    """``get``/``get_many``: the fresh values among ``keys`` (a tagged entry's tags are
    checked with one more round trip); returns a list with FAILED for misses."""
    stats = engine.stats
    if len(keys) == 1:
        raw = yield Get(keys[0])
        raws = FAILED if raw is FAILED else [raw]
    else:
        raws = yield GetMany(list(keys))
    if raws is FAILED:
        stats.misses += len(keys)
        return [FAILED] * len(keys)
    now = engine.now_ms()
    entries: list[Entry | None] = []
    for key, raw in zip(keys, raws, strict=True):
        entry = engine.decode(raw, key=key) if raw is not None else None
        live = (
            entry is not None
            and not entry.negative
            and classify(entry, now, _PLAIN, 0.0) in (FRESH, EARLY)
        )
        entries.append(entry if live else None)
    tag_keys = sorted({k for e in entries if e is not None for k, _ in e.tags})
    tokens: dict[str, bytes] | None = None
    if tag_keys:
        found = yield GetMany(tag_keys)
        if found is not FAILED:
            tokens = _tokens(tag_keys, found)
    values = []
    local = engine.local
    for key, entry in zip(keys, entries, strict=True):
        if entry is not None and _tags_hold(entry, tokens):
            stats.hits += 1
            if local is not None:
                yield KeepLocal(key, entry, now)
            values.append(entry.value)
        else:
            stats.misses += 1
            values.append(FAILED)
    return values


_PLAIN = ReadOptions(ttl=None, early_refresh=0.0)
