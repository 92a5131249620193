"""The Cache facade: keys, TTLs, values and failure handling over one store.

Every public method comes as a sync/async pair (``get``/``aget``, ...). A pair shares
all of its logic; only the store call differs (``_call`` blocks, ``_acall`` awaits).
The cache-aside algorithm itself lives in ``_readpath.read_through`` and is driven by
``_drive`` or ``_adrive``.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from ._breaker import CircuitBreaker
from ._decorator import CacheDecorator, make_cached
from ._envelope import Entry, Serializer
from ._keys import KeyBuilder
from ._policy import DEFAULT, TtlPolicy, TtlSpec
from ._readpath import FAILED, LOAD, ErrorPolicy, Flow, lease_key, read_through
from ._stats import RateLimitedLog, Stats
from .backends import AsyncStore, Store, store_from_url
from .errors import ConfigurationError, DecodeError, StoreUnavailable

__all__ = ["Cache"]

log = logging.getLogger("cachelayer.cache")

_INVALIDATING = frozenset({"delete", "clear"})


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
        max_key_length: store keys longer than this are shortened with a hash.
        clock: wall-clock seconds, written into entries; injected by tests.
        rng: uniform ``[0, 1)`` source for TTL jitter; injected by tests.
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
        max_key_length: int = 250,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if on_error not in ("ignore", "raise"):
            raise ConfigurationError(f"on_error={on_error!r} must be 'ignore' or 'raise'")
        if not lease_ttl > 0:
            raise ConfigurationError(f"lease_ttl={lease_ttl!r} must be > 0")
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
            else (list(signing_key))
        )
        self._serializer = Serializer(
            codec, compress_threshold=compress_threshold, signing_key=keys
        )
        self._keys = KeyBuilder(namespace, version, max_key_length)
        self._ttl = TtlPolicy(ttl, ttls, jitter, rng)
        self._raise = on_error == "raise"
        self._breaker = breaker or CircuitBreaker()
        self._clock = clock
        self._astore: AsyncStore | None = None
        self.lease_ttl = float(lease_ttl)
        self.stats = Stats()
        self._log = RateLimitedLog(log)

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
    ) -> None:
        """Let instances of ``cls`` be cached (see :meth:`cachelayer.TypeRegistry.register`).

        Every process that reads the entries must register the same name.
        """
        self._serializer.registry.register(cls, name=name, dump=dump, load=load)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _encode(
        self, value: Any, seconds: float | None, duration_ms: int = 0, negative: bool = False
    ) -> bytes:
        now = self._now_ms()
        fresh_until = 0 if seconds is None else now + max(1, int(seconds * 1000))
        return self._serializer.dumps(
            value,
            written_ms=now,
            fresh_until_ms=fresh_until,
            duration_ms=duration_ms,
            negative=negative,
        )

    def _encode_negative(
        self, exc_type: type[BaseException], exc: BaseException, seconds: float | None
    ) -> bytes:
        stored = {"error": ErrorPolicy.name(exc_type), "args": list(exc.args)}
        try:
            return self._encode(stored, seconds, negative=True)
        except TypeError:  # args the codec cannot store: keep the type, drop the args
            stored["args"] = []
            return self._encode(stored, seconds, negative=True)

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

    def _value(self, raw: Any, default: Any) -> Any:
        """The live value in ``raw`` bytes, or ``default`` (absent, expired, corrupt, error)."""
        if raw is not None and raw is not FAILED:
            entry = self._decode(raw)
            if (
                entry is not None
                and not entry.negative
                and (not entry.fresh_until_ms or self._now_ms() < entry.fresh_until_ms)
            ):
                self.stats.hits += 1
                return entry.value
        self.stats.misses += 1
        return default

    # -- guarded store calls: the only places that touch the store -------------------------

    def _call(self, method: str, args: tuple[Any, ...], raising: bool) -> Any:
        if not self._breaker.allow():
            return self._skipped(method, raising)
        try:
            result = getattr(self._store, method)(*args)
        except Exception as exc:
            return self._failed(method, exc, raising)
        self._breaker.success()
        return result

    async def _acall(self, method: str, args: tuple[Any, ...], raising: bool) -> Any:
        if not self._breaker.allow():
            return self._skipped(method, raising)
        try:
            result = await getattr(self.astore, method)(*args)
        except Exception as exc:
            return self._failed(method, exc, raising)
        self._breaker.success()
        return result

    def _skipped(self, method: str, raising: bool) -> Any:
        self.stats.short_circuits += 1
        if method in _INVALIDATING:
            self._invalidation_failed(method, "circuit breaker open")
        if raising:
            raise StoreUnavailable(f"store {method} not attempted: the circuit breaker is open")
        return FAILED

    def _failed(self, method: str, exc: Exception, raising: bool) -> Any:
        if self._breaker.failure():
            self.stats.breaker_opened += 1
            log.warning(
                "cachelayer: circuit breaker opened after %d consecutive store failures; "
                "no store calls for %.1f s",
                self._breaker.threshold,
                self._breaker.cooldown,
            )
        if method in _INVALIDATING:
            self._invalidation_failed(method, f"{type(exc).__name__}: {exc}")
        else:
            self.stats.store_errors += 1
            self._log.log(
                logging.WARNING,
                "store",
                "cachelayer: store %s failed (%s: %s); continuing without the cache",
                method,
                type(exc).__name__,
                exc,
            )
        if raising:
            raise StoreUnavailable(f"store {method} failed: {type(exc).__name__}: {exc}") from exc
        return FAILED

    def _invalidation_failed(self, method: str, reason: str) -> None:
        self.stats.invalidation_errors += 1
        self._log.log(
            logging.WARNING,
            "invalidation",
            "cachelayer: INVALIDATION FAILED (store %s: %s); the old value may be served "
            "until its TTL ends",
            method,
            reason,
        )

    @property
    def store(self) -> Store:
        """The sync face of the store."""
        return self._store

    @property
    def astore(self) -> AsyncStore:
        """The asyncio face of the store."""
        if self._astore is None:
            self._astore = self._store.asynchronous()
        return self._astore

    # -- the read path's shells ------------------------------------------------------------

    def _drive(self, flow: Flow, loader: Callable[[], Any]) -> Any:
        try:
            op = next(flow)
            while True:
                if op is LOAD:
                    try:
                        result = loader()
                    except Exception as exc:
                        op = flow.throw(exc)
                        continue
                else:
                    result = self._call(op[0], op[1:], False)
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value

    async def _adrive(self, flow: Flow, loader: Callable[[], Any]) -> Any:
        try:
            op = next(flow)
            while True:
                if op is LOAD:
                    try:
                        result = loader()
                        if inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:
                        op = flow.throw(exc)
                        continue
                else:
                    result = await self._acall(op[0], op[1:], False)
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value

    # -- the API, sync and async pairs -------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value for ``key``, or ``default`` when absent, expired or unreadable.

        Raises:
            StoreUnavailable: only with ``on_error="raise"``, when the store fails.
        """
        return self._value(self._call("get", (self._keys.full(key),), self._raise), default)

    async def aget(self, key: str, default: Any = None) -> Any:
        """``get`` for asyncio code."""
        raw = await self._acall("get", (self._keys.full(key),), self._raise)
        return self._value(raw, default)

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

    def _delete_args(self, keys: Iterable[str]) -> tuple[list[str]]:
        doomed: list[str] = []
        for key in keys:
            full = self._keys.full(key)
            doomed += (full, lease_key(full))
        return (doomed,)

    def delete(self, key: str) -> bool:
        """Remove ``key`` and void fills in flight for it; True if something was there.

        A failure is never raised (unless ``on_error="raise"``) but counted as
        ``invalidation_errors`` and logged at WARNING: the old value may live to its TTL.
        """
        return self._delete_result(self._call("delete", self._delete_args([key]), self._raise))

    async def adelete(self, key: str) -> bool:
        """``delete`` for asyncio code."""
        result = await self._acall("delete", self._delete_args([key]), self._raise)
        return self._delete_result(result)

    @staticmethod
    def _delete_result(result: Any) -> bool:
        return result is not FAILED and result > 0

    invalidate = delete
    ainvalidate = adelete

    def _invalidate_full(self, full: str) -> bool:
        return self._delete_result(self._call("delete", ([full, lease_key(full)],), False))

    async def _ainvalidate_full(self, full: str) -> bool:
        result = await self._acall("delete", ([full, lease_key(full)],), False)
        return self._delete_result(result)

    def _many_result(self, keys: list[str], raws: Any) -> dict[str, Any]:
        if raws is FAILED:
            self.stats.misses += len(keys)
            return {}
        found = {}
        for key, raw in zip(keys, raws, strict=True):
            value = self._value(raw, FAILED)
            if value is not FAILED:
                found[key] = value
        return found

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the keys that hold a live value; one round trip."""
        keys = list(keys)
        fulls = [self._keys.full(k) for k in keys]
        return self._many_result(keys, self._call("get_many", (fulls,), self._raise))

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``get_many`` for asyncio code."""
        keys = list(keys)
        fulls = [self._keys.full(k) for k in keys]
        return self._many_result(keys, await self._acall("get_many", (fulls,), self._raise))

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

    def delete_many(self, keys: Iterable[str]) -> int:
        """``delete`` for each key in one step; returns how many store keys existed."""
        result = self._call("delete", self._delete_args(keys), self._raise)
        return 0 if result is FAILED else int(result)

    async def adelete_many(self, keys: Iterable[str]) -> int:
        """``delete_many`` for asyncio code."""
        result = await self._acall("delete", self._delete_args(keys), self._raise)
        return 0 if result is FAILED else int(result)

    def get_or_load(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: TtlSpec = DEFAULT,
        *,
        cache_errors: Mapping[type[BaseException], float] | None = None,
    ) -> Any:
        """The cached value for ``key``; on a miss, ``loader()``'s value, cached for ``ttl``.

        Never raises a store error: with the store down, the loader's value is returned.
        The loader's own exceptions reach the caller unchanged; those whose type is in
        ``cache_errors`` (type -> seconds) are cached and re-raised without a load.
        """
        self._ttl.check(ttl)
        errors = ErrorPolicy(cache_errors) if cache_errors else None
        return self._drive(read_through(self, self._keys.full(key), ttl, errors), loader)

    async def aget_or_load(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: TtlSpec = DEFAULT,
        *,
        cache_errors: Mapping[type[BaseException], float] | None = None,
    ) -> Any:
        """``get_or_load`` for asyncio code; ``loader`` may be sync or return an awaitable."""
        self._ttl.check(ttl)
        errors = ErrorPolicy(cache_errors) if cache_errors else None
        return await self._adrive(read_through(self, self._keys.full(key), ttl, errors), loader)

    def cached(
        self,
        ttl: TtlSpec = DEFAULT,
        *,
        key: str | Callable[..., str] | None = None,
        cache_errors: Mapping[type[BaseException], float] | None = None,
    ) -> CacheDecorator:
        """Decorate a function (def or async def) so its results are cached.

        Args:
            ttl: seconds, a TTL class name, or ``None`` (no expiry).
            key: a template naming parameters (``"user:{user_id}"``), a callable with the
                function's signature returning the key, or ``None`` for the qualified name
                and every argument.
            cache_errors: exception type -> seconds to cache that failure (negative caching).

        The wrapper has ``.invalidate(*args, **kwargs)``, ``.ainvalidate(...)``,
        ``.uncached(*args, **kwargs)`` and ``.key(*args, **kwargs)``.

        Raises:
            ConfigurationError: at decoration time, for a bad TTL or a template naming a
                parameter the function does not have.
        """
        return make_cached(self, ttl=ttl, key=key, cache_errors=cache_errors)

    def clear(self) -> int:
        """Delete every entry of this namespace and version; returns how many."""
        result = self._call("clear", (self._keys.prefix,), self._raise)
        return 0 if result is FAILED else int(result)

    async def aclear(self) -> int:
        """``clear`` for asyncio code."""
        result = await self._acall("clear", (self._keys.prefix,), self._raise)
        return 0 if result is FAILED else int(result)

    def close(self) -> None:
        """Close the store's connections (the sync face)."""
        self._store.close()

    async def aclose(self) -> None:
        """Close the asyncio face's connections, then the sync face's."""
        if self._astore is not None:
            await self._astore.close()
        self._store.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
