"""The Cache facade: keys, TTLs, values and failure handling over one store.

Every public method comes as a sync/async pair (``get``/``aget``, ...). A pair shares
all of its logic; only the store call differs (``_call`` blocks, ``_acall`` awaits).
The cache-aside algorithm itself lives in ``_readpath.read_through`` and is driven by
``_drive`` or ``_adrive``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from ._breaker import CircuitBreaker
from ._decorator import CacheDecorator, make_cached
from ._envelope import Entry, Serializer
from ._keys import KeyBuilder
from ._policy import DEFAULT, TtlPolicy, TtlSpec
from ._readpath import (
    FAILED,
    ErrorPolicy,
    ReadOptions,
    lease_key,
    plain_get,
    read_through,
)
from ._runner import StoreRunner
from ._stats import RateLimitedLog, Stats
from .backends import AsyncStore, Store, store_from_url
from .errors import ConfigurationError, DecodeError

__all__ = ["Cache"]

log = logging.getLogger("cachelayer.cache")

#: Tag keys live long enough to outlast any entry stamped with their token.
DEFAULT_TAG_TTL = 30 * 86400.0


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Cache:
    """A cache-aside layer over process memory (``memory://``) or Redis (``redis://``).

    Args:
        url: ``"memory://"`` (default; ``?max_entries=N&max_bytes=64MB``), ``redis://``,
            ``rediss://``, ``unix://``, ``valkey://``, or a store object
            (:class:`~cachelayer.backends.MemoryStore`, ``RedisStore(...)``).
        namespace: the first part of every key; ``[A-Za-z0-9_.-]+``.
        version: the second part (``v<version>``); bump it to orphan every old entry.
        ttl: default TTL in seconds (or a class name); ``None`` never expires.
        ttls: named TTL classes, ``{"profile": 3600, "leaderboard": 60}``.
        jitter: TTLs vary by up to this fraction either way (default 0.1; 0 turns it off).
        codec: ``"json"`` (default), ``"msgpack"``, or ``"pickle"`` (needs signing_key).
        compress_threshold: zstd-compress payloads of at least this many bytes; ``None``
            turns compression off.
        signing_key: HMAC-SHA256 key(s); with one, every entry is signed and verified.
        on_error: ``"ignore"`` (default): a failing store makes plain calls return
            their fallback (``get`` its default); ``"raise"``: they raise
            :class:`~cachelayer.errors.StoreUnavailable`. ``get_or_load`` and decorated
            functions never raise store errors either way.
        breaker: the circuit breaker (default: opens after 5 consecutive failures for 5 s).
        lease_ttl: seconds a miss may take to load before its fill is refused.
        lease_wait: seconds a miss waits for another process's fill of the same key
            before it loads by itself (without filling).
        refresh_workers: threads for background refreshes of sync functions.
        tag_ttl: seconds a tag's token is kept; entries with tags must expire sooner.
        max_key_length: store keys of this length or more are cut to it (a readable
            head, then a hash of the whole key).
        clock: wall-clock seconds, written into entries; injected by tests.
        rng: uniform ``[0, 1)`` source for TTL jitter and early-refresh draws; injected
            by tests.
    """

    def __init__(
        self,
        url: str | Store = "memory://",
        *,
        namespace: str = "cache",
        version: int | str = 1,
        ttl: TtlSpec = 300,
        ttls: Mapping[str, float] | None = None,
        jitter: float = 0.1,
        codec: str = "json",
        compress_threshold: int | None = 1024,
        signing_key: bytes | str | Iterable[bytes | str] | None = None,
        on_error: Literal["ignore", "raise"] = "ignore",
        breaker: CircuitBreaker | None = None,
        lease_ttl: float = 10.0,
        lease_wait: float = 1.0,
        refresh_workers: int = 4,
        tag_ttl: float = DEFAULT_TAG_TTL,
        max_key_length: int = 250,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if on_error not in ("ignore", "raise"):
            raise ConfigurationError(f"on_error={on_error!r} must be 'ignore' or 'raise'")
        if not lease_ttl > 0:
            raise ConfigurationError(f"lease_ttl={lease_ttl!r} must be > 0")
        if not lease_wait >= 0:
            raise ConfigurationError(f"lease_wait={lease_wait!r} must be >= 0")
        if not tag_ttl > 0:
            raise ConfigurationError(f"tag_ttl={tag_ttl!r} must be > 0")
        if isinstance(url, str):
            self.url = _redact(url)
            self._store: Store = store_from_url(url)
        elif isinstance(url, Store):
            self.url = type(url).__name__
            self._store = url
        else:
            raise ConfigurationError(f"Cache() takes a URL or a store, not {url!r}")
        keys = (
            signing_key
            if signing_key is None or isinstance(signing_key, (bytes, str))
            else list(signing_key)
        )
        self._serializer = Serializer(
            codec, compress_threshold=compress_threshold, signing_key=keys
        )
        self._keys = KeyBuilder(namespace, version, max_key_length)
        self._ttl = TtlPolicy(ttl, ttls, jitter, rng)
        self._raise = on_error == "raise"
        self._clock = clock
        self._rng = rng
        self.stats = Stats()
        self._log = RateLimitedLog(log)
        self.lease_ttl = float(lease_ttl)
        self.lease_wait = float(lease_wait)
        self.tag_ttl = float(tag_ttl)
        runner = StoreRunner(self._store, breaker or CircuitBreaker(), self.stats, refresh_workers)
        self._runner = runner
        self._breaker, self._refresher = runner.breaker, runner.refresher
        self._call, self._acall = runner.call, runner.acall
        self._drive, self._adrive = runner.drive, runner.adrive

    def __repr__(self) -> str:
        return f"Cache({self.url!r}, namespace={self._keys.namespace!r})"

    # -- values ----------------------------------------------------------------------------

    def register_type(
        self,
        cls: type,
        *,
        name: str | None = None,
        dump: Callable[[Any], Any] | None = None,
        load: Callable[[Any], Any] | None = None,
        subclasses: bool = False,
    ) -> None:
        """Let instances of ``cls`` be cached (see :meth:`cachelayer.TypeRegistry.register`).

        With ``subclasses=True`` one registration covers ``cls`` and every subclass;
        ``dump`` must then record which class to rebuild, and ``load`` decide which it
        accepts. Every process that reads the entries must register the same name.
        """
        self._serializer.registry.register(
            cls, name=name, dump=dump, load=load, subclasses=subclasses
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _encode(
        self,
        value: Any,
        seconds: float | None,
        duration_ms: int = 0,
        negative: bool = False,
        tags: Sequence[tuple[str, bytes]] = (),
    ) -> bytes:
        now = self._now_ms()
        fresh_until = 0 if seconds is None else now + max(1, int(seconds * 1000))
        return self._serializer.dumps(
            value,
            written_ms=now,
            fresh_until_ms=fresh_until,
            duration_ms=duration_ms,
            negative=negative,
            tags=tags,
        )

    @staticmethod
    def _store_ttl(seconds: float | None, options: ReadOptions) -> float | None:
        """How long the store keeps an entry: fresh time plus its stale window."""
        return None if seconds is None else seconds + options.keep

    def _log_refresh_error(self, exc: Exception) -> None:
        self._log.log(
            logging.WARNING,
            "refresh",
            "cachelayer: a background refresh failed (%s); the current value stays",
            type(exc).__name__,
        )

    def _encode_negative(
        self,
        exc_type: type[BaseException],
        exc: BaseException,
        seconds: float | None,
        tags: Sequence[tuple[str, bytes]] = (),
    ) -> bytes:
        stored = {"error": ErrorPolicy.name(exc_type), "args": list(exc.args)}
        try:
            return self._encode(stored, seconds, negative=True, tags=tags)
        except TypeError:  # args the codec cannot store: keep the type, drop the args
            stored["args"] = []
            return self._encode(stored, seconds, negative=True, tags=tags)

    def _decode(self, raw: bytes) -> Entry | None:
        try:
            return self._serializer.loads(raw)
        except DecodeError as exc:
            self.stats.decode_errors += 1
            self._log.log(
                logging.WARNING,
                "decode",
                "cachelayer: an entry did not decode (%s); treated as a miss",
                exc,
            )
            return None

    # -- the API, sync and async pairs -------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value for ``key``, or ``default`` when absent, expired or unreadable.

        Raises:
            StoreUnavailable: only with ``on_error="raise"``, when the store fails.
        """
        value = self._drive(plain_get(self, [self._keys.full(key)]), None, self._raise)[0]
        return default if value is FAILED else value

    async def aget(self, key: str, default: Any = None) -> Any:
        """``get`` for asyncio code."""
        flow = plain_get(self, [self._keys.full(key)])
        value = (await self._adrive(flow, None, self._raise))[0]
        return default if value is FAILED else value

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the keys that hold a live value; one round trip."""
        keys = list(keys)
        if not keys:
            return {}
        values = self._drive(
            plain_get(self, [self._keys.full(k) for k in keys]), None, self._raise
        )
        return {k: v for k, v in zip(keys, values, strict=True) if v is not FAILED}

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``get_many`` for asyncio code."""
        keys = list(keys)
        if not keys:
            return {}
        flow = plain_get(self, [self._keys.full(k) for k in keys])
        values = await self._adrive(flow, None, self._raise)
        return {k: v for k, v in zip(keys, values, strict=True) if v is not FAILED}

    def _set_args(self, key: str, value: Any, ttl: TtlSpec) -> tuple[Any, ...]:
        full = self._keys.full(key)
        seconds = self._ttl.resolve(ttl)
        self.stats.sets += 1
        return (full, self._encode(value, seconds), seconds, lease_key(full))

    def set(self, key: str, value: Any, ttl: TtlSpec = DEFAULT) -> None:
        """Store ``value`` (any supported type, falsy ones included) for ``ttl`` seconds.

        Also voids any fill in flight for ``key``, so a slower reader cannot overwrite it.

        Raises:
            TypeError: the value holds a type the codec cannot store exactly.
            StoreUnavailable: only with ``on_error="raise"``.
        """
        self._call("set", self._set_args(key, value, ttl), self._raise)

    async def aset(self, key: str, value: Any, ttl: TtlSpec = DEFAULT) -> None:
        """``set`` for asyncio code."""
        await self._acall("set", self._set_args(key, value, ttl), self._raise)

    def _set_many_args(self, mapping: Mapping[str, Any], ttl: TtlSpec) -> tuple[Any, ...]:
        items, void = [], []
        for key, value in mapping.items():
            full, payload, seconds, lease = self._set_args(key, value, ttl)
            items.append((full, payload, seconds))
            void.append(lease)
        return (items, void)

    def set_many(self, mapping: Mapping[str, Any], ttl: TtlSpec = DEFAULT) -> None:
        """``set`` for each item (each with its own jitter); one round trip."""
        self._call("set_many", self._set_many_args(mapping, ttl), self._raise)

    async def aset_many(self, mapping: Mapping[str, Any], ttl: TtlSpec = DEFAULT) -> None:
        """``set_many`` for asyncio code."""
        await self._acall("set_many", self._set_many_args(mapping, ttl), self._raise)

    def _delete_args(self, keys: Iterable[str], full: bool = False) -> tuple[list[str]]:
        doomed: list[str] = []
        for key in keys:
            store_key = key if full else self._keys.full(key)
            doomed += (store_key, lease_key(store_key))
        return (doomed,)

    def delete(self, key: str) -> bool:
        """Remove ``key`` and void fills in flight for it; True if something was there.

        A failure is never raised (unless ``on_error="raise"``) but counted as
        ``invalidation_errors`` and logged at WARNING: the old value may live to its TTL.
        """
        result = self._call("delete", self._delete_args([key]), self._raise, True)
        return result is not FAILED and result > 0

    async def adelete(self, key: str) -> bool:
        """``delete`` for asyncio code."""
        result = await self._acall("delete", self._delete_args([key]), self._raise, True)
        return result is not FAILED and result > 0

    #: ``invalidate(key)``: the same as ``delete``, named for the write path.
    invalidate = delete
    ainvalidate = adelete

    def delete_many(self, keys: Iterable[str]) -> int:
        """``delete`` for each key in one step; returns how many store keys existed."""
        result = self._call("delete", self._delete_args(keys), self._raise, True)
        return 0 if result is FAILED else int(result)

    async def adelete_many(self, keys: Iterable[str]) -> int:
        """``delete_many`` for asyncio code."""
        result = await self._acall("delete", self._delete_args(keys), self._raise, True)
        return 0 if result is FAILED else int(result)

    def _tag_args(self, tags: Iterable[str]) -> tuple[Any, ...]:
        items = [(self._keys.tag(tag), os.urandom(8), self.tag_ttl) for tag in tags]
        return (items,)

    def invalidate_tags(self, *tags: str) -> bool:
        """Invalidate every entry cached with any of ``tags``, in O(1) per tag.

        Each tag has a token in the store; an entry records the tokens it was computed
        under and is a miss once one of them changed. This call replaces the tokens, so
        every process sees it at once. Returns False (and counts an invalidation error)
        when the store failed.
        """
        if not tags:
            return True
        return self._call("set_many", self._tag_args(tags), self._raise, True) is not FAILED

    async def ainvalidate_tags(self, *tags: str) -> bool:
        """``invalidate_tags`` for asyncio code."""
        if not tags:
            return True
        result = await self._acall("set_many", self._tag_args(tags), self._raise, True)
        return result is not FAILED

    def invalidate_after_commit(
        self,
        on_commit: Callable[[Callable[[], None]], object],
        *,
        keys: Iterable[str] = (),
        tags: Iterable[str] = (),
    ) -> None:
        """Invalidate ``keys`` and ``tags`` once the caller's transaction has committed.

        ``on_commit`` registers a callback to run after the commit: Django's
        ``transaction.on_commit``, or a SQLAlchemy ``after_commit`` hook. Invalidating
        before the commit would let a reader load and cache the old row again.
        """
        keys, tags = list(keys), list(tags)

        def run() -> None:
            if keys:
                self.delete_many(keys)
            if tags:
                self.invalidate_tags(*tags)

        on_commit(run)

    def _invalidate_full(self, full: str) -> bool:
        result = self._call("delete", self._delete_args([full], full=True), False, True)
        return result is not FAILED and result > 0

    async def _ainvalidate_full(self, full: str) -> bool:
        result = await self._acall("delete", self._delete_args([full], full=True), False, True)
        return result is not FAILED and result > 0

    def get_or_load(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: TtlSpec = DEFAULT,
        *,
        cache_errors: Mapping[type[BaseException], float] | None = None,
        stale_ttl: float = 0.0,
        stale_if_error: float = 0.0,
        early_refresh: float = 1.0,
        tags: Sequence[str] = (),
    ) -> Any:
        """The cached value for ``key``; on a miss, ``loader()``'s value, cached for ``ttl``.

        Never raises a store error: with the store down, the loader's value is returned.
        The loader's own exceptions reach the caller unchanged; those whose type is in
        ``cache_errors`` (type -> seconds) are cached and re-raised without a load. The
        other options are those of :meth:`cached`.
        """
        options = self._options(
            ttl, cache_errors, stale_ttl, stale_if_error, early_refresh, tagged=bool(tags)
        )
        tag_keys = [self._keys.tag(t) for t in tags]
        return self._drive(read_through(self, self._keys.full(key), options, tag_keys), loader)

    async def aget_or_load(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: TtlSpec = DEFAULT,
        *,
        cache_errors: Mapping[type[BaseException], float] | None = None,
        stale_ttl: float = 0.0,
        stale_if_error: float = 0.0,
        early_refresh: float = 1.0,
        tags: Sequence[str] = (),
    ) -> Any:
        """``get_or_load`` for asyncio code; ``loader`` may be sync or return an awaitable."""
        options = self._options(
            ttl, cache_errors, stale_ttl, stale_if_error, early_refresh, tagged=bool(tags)
        )
        tag_keys = [self._keys.tag(t) for t in tags]
        flow = read_through(self, self._keys.full(key), options, tag_keys)
        return await self._adrive(flow, loader)

    def _options(
        self,
        ttl: TtlSpec,
        cache_errors: Mapping[type[BaseException], float] | None,
        stale_ttl: float,
        stale_if_error: float,
        early_refresh: float,
        tagged: bool = False,
    ) -> ReadOptions:
        seconds = self._ttl.check(ttl)
        options = ReadOptions(
            ttl,
            ErrorPolicy(cache_errors) if cache_errors else None,
            stale_ttl,
            stale_if_error,
            early_refresh,
        )
        longest = None if seconds is None else seconds * (1 + self._ttl.jitter) + options.keep
        if tagged and (longest is None or longest >= self.tag_ttl):
            raise ConfigurationError(
                f"an entry with tags must expire well before tag_ttl={self.tag_ttl:.0f} s "
                f"(ttl={ttl!r} plus its stale window is too long)"
            )
        return options

    def cached(
        self,
        ttl: TtlSpec = DEFAULT,
        *,
        key: str | Callable[..., str] | None = None,
        cache_errors: Mapping[type[BaseException], float] | None = None,
        stale_ttl: float = 0.0,
        stale_if_error: float = 0.0,
        early_refresh: float = 1.0,
        tags: Sequence[str] = (),
        refresh_after_write: bool = False,
    ) -> CacheDecorator:
        """Decorate a function (def or async def) so its results are cached.

        Args:
            ttl: seconds, a TTL class name, or ``None`` (no expiry).
            key: a template naming parameters (``"user:{user_id}"``), a callable with the
                function's signature returning the key, or ``None`` for the qualified name
                and every argument.
            cache_errors: exception type -> seconds to cache that failure (negative caching).
            stale_ttl: serve an expired value for this many more seconds while one
                background refresh (across all processes) replaces it.
            stale_if_error: for this many seconds after expiry, a failing load returns the
                expired value instead of raising.
            early_refresh: XFetch beta (0 turns it off): hits shortly before expiry
                refresh in the background, with a probability that grows as expiry nears.
            tags: templates like ``"user:{user_id}"``; ``cache.invalidate_tags("user:42")``
                drops every entry carrying that tag.
            refresh_after_write: after ``.invalidate(...)``, load the entry again in the
                background so the next reader hits.

        The wrapper has ``.invalidate(*args, **kwargs)``, ``.ainvalidate(...)``,
        ``.uncached(*args, **kwargs)`` and ``.key(*args, **kwargs)``.

        Raises:
            ConfigurationError: at decoration time, for a bad TTL or option, or a template
                naming a parameter the function does not have.
        """
        options = self._options(
            ttl, cache_errors, stale_ttl, stale_if_error, early_refresh, tagged=bool(tags)
        )
        return make_cached(
            self, options, key=key, tags=tags, refresh_after_write=refresh_after_write
        )

    def clear(self) -> int:
        """Delete every entry of this namespace and version; returns how many."""
        result = self._call("clear", (self._keys.prefix,), self._raise, True)
        return 0 if result is FAILED else int(result)

    async def aclear(self) -> int:
        """``clear`` for asyncio code."""
        result = await self._acall("clear", (self._keys.prefix,), self._raise, True)
        return 0 if result is FAILED else int(result)

    @property
    def store(self) -> Store:
        """The sync face of the store."""
        return self._store

    @property
    def astore(self) -> AsyncStore:
        """The asyncio face of the store."""
        return self._runner.astore

    def close(self) -> None:
        """Finish background refreshes, then close the store's connections."""
        self._runner.close()

    async def aclose(self) -> None:
        """Cancel this loop's background refreshes, then close both faces' connections."""
        await self._runner.aclose()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
