"""The Cache facade: keys, TTLs, values and failure handling over one store.

Every public method comes as a sync/async pair (``get``/``aget``, ...). A pair shares
all of its logic; only the store call differs (``call`` blocks, ``acall`` awaits).
The Cache builds the :class:`~cachelayer._engine.Engine` every face shares (``engine``);
the cache-aside algorithm itself lives in ``_readpath.read_through``, driven by the
engine's ``drive`` or ``adrive``.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from ._breaker import CircuitBreaker
from ._decorator import CacheDecorator, make_cached
from ._engine import Engine, lease_key
from ._envelope import DEFAULT_MAX_VALUE_SIZE, Serializer
from ._keys import KeyBuilder, derived_key
from ._local import MISSING, LocalTier
from ._lock import Lock
from ._metrics import HistogramSnapshot, LocalSnapshot, Metrics, StatsView, register, unregister
from ._options import ErrorPolicy, Fresh, ReadOptions
from ._policy import DEFAULT, TtlPolicy, TtlSpec
from ._purge import EVERYTHING, KEYS, TAGS, Subscriber, channel_for
from ._readpath import plain_get, read_through, warm
from ._redact import redact_url
from ._runner import StoreRunner
from ._steps import FAILED, Clear, Delete, Flow, Set, SetMany
from ._warm import Job, Progress, WarmResult, run_async, run_sync
from .backends import AsyncStore, Store, store_from_url
from .backends.base import AsyncPublisher, Publisher
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .events import Signer

__all__ = ["Cache"]

T = TypeVar("T")

#: The Store protocol's methods (to name the missing ones of an incomplete store).
_STORE_METHODS = [
    name for name in dir(Store) if not name.startswith("_") and callable(getattr(Store, name))
]

#: Tag keys live long enough to outlast any entry stamped with their token.
DEFAULT_TAG_TTL = 30 * 86400.0


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
        max_value_size: the largest encoded value (before compression) in bytes, 8 MiB by
            default; larger values are refused on write (``ValueError``) and larger
            stored payloads are misses, refused before they are decompressed.
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
        local: an in-process tier in front of the store for ``get``/``aget``,
            ``get_or_load`` and decorated functions: a :class:`~cachelayer.LocalTier`
            or its settings (``{"max_entries": 10_000, "max_ttl": 30}``). Kept coherent
            across processes by purges published on every invalidation; needs a store
            that can publish (Redis, Valkey, Sentinel). See docs/local.md.
        publish_invalidations: publish every invalidation for other processes' local
            tiers. Default: only when ``local`` is set; turn it on in processes that
            write without a local tier of their own (workers, cron jobs).
        publish_stats: write this process's figures for the namespace to the store every
            N seconds (``True``: 10) for ``cachelayer stats`` (docs/observability.md).
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
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        on_error: Literal["ignore", "raise"] = "ignore",
        breaker: CircuitBreaker | None = None,
        lease_ttl: float = 10.0,
        lease_wait: float = 1.0,
        refresh_workers: int = 4,
        tag_ttl: float = DEFAULT_TAG_TTL,
        max_key_length: int = 250,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        local: LocalTier | Mapping[str, Any] | None = None,
        publish_invalidations: bool | None = None,
        publish_stats: float | bool = False,
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
            self.url = redact_url(url)
            store: Store = store_from_url(url)
        elif isinstance(url, Store):
            self.url = type(url).__name__
            store = url
        else:
            missing = [name for name in _STORE_METHODS if not callable(getattr(url, name, None))]
            if missing and len(missing) < len(_STORE_METHODS):
                raise ConfigurationError(
                    f"{type(url).__name__} is not a complete store: it lacks "
                    f"{', '.join(missing)} (see docs/stores.md; "
                    "cachelayer.testing_contract checks a store)"
                )
            raise ConfigurationError(f"Cache() takes a URL or a store, not {url!r}")
        keys = (
            signing_key
            if signing_key is None or isinstance(signing_key, (bytes, str))
            else list(signing_key)
        )
        tier = None if local is None else LocalTier.from_option(local)
        publish = tier is not None if publish_invalidations is None else publish_invalidations
        if tier is not None and not publish:
            raise ConfigurationError(
                "local= needs publish_invalidations: other processes' writes reach this "
                "process's tier only through published purges (docs/local.md)"
            )
        if publish and not (
            isinstance(store, Publisher) and isinstance(store.asynchronous(), AsyncPublisher)
        ):
            raise ConfigurationError(
                f"{'local=' if tier is not None else 'publish_invalidations'} needs a store "
                "that can publish invalidations (Redis, Valkey, Sentinel, Cluster, memory); "
                f"{type(store).__name__} cannot"
            )
        keybuilder = KeyBuilder(namespace, version, max_key_length)
        self._metrics = Metrics()
        #: The counters of this Cache, summed over its decorated functions:
        #: ``cache.stats.hits``, or ``cache.stats()`` for a full snapshot.
        self.stats = StatsView(self._metrics, self._describe)
        base = self._metrics.base
        runner = StoreRunner(store, breaker or CircuitBreaker(), base, refresh_workers)
        self.engine = Engine(
            runner=runner,
            serializer=Serializer(
                codec,
                compress_threshold=compress_threshold,
                signing_key=keys,
                max_value_size=max_value_size,
            ),
            keys=keybuilder,
            ttl=TtlPolicy(ttl, ttls, jitter, rng),
            stats=base,
            metrics=self._metrics,
            clock=clock,
            random=rng,
            lease_ttl=float(lease_ttl),
            lease_wait=float(lease_wait),
            tag_ttl=float(tag_ttl),
            raise_errors=on_error == "raise",
            local=tier,
            purge_channel=channel_for(keybuilder.prefix) if publish else None,
        )
        #: The local tier (``local=``), or None.
        self.local = tier
        self._subscriber: Subscriber | None = None
        if tier is not None:
            assert isinstance(store, Publisher)
            self._subscriber = Subscriber(
                store, channel_for(keybuilder.prefix), tier, self.engine.origin
            )
            self._subscriber.start()
            # A Cache dropped without close() must not leave its thread and connection.
            weakref.finalize(self, self._subscriber.halt)
        self.lease_ttl = self.engine.lease_ttl
        self.lease_wait = self.engine.lease_wait
        self.tag_ttl = self.engine.tag_ttl
        register(self)
        #: takes this Cache out of the fleet publisher (``publish_stats``), or None
        self._unpublish: Callable[[], None] | None = None
        if publish_stats is not False:
            from ._fleet import join_fleet  # off by default: not imported until asked for

            self._unpublish = join_fleet(self, publish_stats)

    def __repr__(self) -> str:
        return f"Cache({self.url!r}, namespace={self.engine.keys.namespace!r})"

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
        self.engine.serializer.registry.register(
            cls, name=name, dump=dump, load=load, subclasses=subclasses
        )

    # -- the API, sync and async pairs -------------------------------------------------------

    def _local_hit(self, full: str) -> Any:
        """The value the local tier holds for a store key (counted), or MISSING."""
        local = self.engine.local
        if local is None:
            return MISSING
        value = local.get(full)
        if value is not MISSING:
            stats = self.engine.stats
            stats.local_hits += 1  # (and so in hits: Stats.count)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value for ``key``, or ``default`` when absent, expired or unreadable.

        Raises:
            StoreUnavailable: only with ``on_error="raise"``, when the store fails.
        """
        e = self.engine
        full = e.keys.full(key)
        if e.local is not None:  # (no call at all on the default path)
            value = self._local_hit(full)
            if value is not MISSING:
                return value
        value = e.drive(plain_get(e, [full]), None, e.raise_errors)[0]
        return default if value is FAILED else value

    async def aget(self, key: str, default: Any = None) -> Any:
        """``get`` for asyncio code."""
        e = self.engine
        full = e.keys.full(key)
        if e.local is not None:  # (no call at all on the default path)
            value = self._local_hit(full)
            if value is not MISSING:
                return value
        value = (await e.adrive(plain_get(e, [full]), None, e.raise_errors))[0]
        return default if value is FAILED else value

    def _local_many(self, keys: Iterable[str]) -> tuple[dict[str, Any], list[str], list[str]]:
        """``(found, keys, store keys)``: what the local tier holds (counted), and the
        keys left for the store with their store keys."""
        e = self.engine
        full_of = e.keys.full
        found: dict[str, Any] = {}
        if e.local is None:  # (the default path: no per-key look at a tier)
            keys = list(keys)
            return found, keys, [full_of(key) for key in keys]
        rest: list[str] = []
        fulls: list[str] = []
        for key in keys:
            full = full_of(key)
            value = self._local_hit(full)
            if value is MISSING:
                rest.append(key)
                fulls.append(full)
            else:
                found[key] = value
        return found, rest, fulls

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the keys that hold a live value; one round trip (none for
        the keys the local tier holds)."""
        e = self.engine
        found, keys, fulls = self._local_many(keys)
        if keys:
            values = e.drive(plain_get(e, fulls), None, e.raise_errors)
            found.update((k, v) for k, v in zip(keys, values, strict=True) if v is not FAILED)
        return found

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``get_many`` for asyncio code."""
        e = self.engine
        found, keys, fulls = self._local_many(keys)
        if keys:
            values = await e.adrive(plain_get(e, fulls), None, e.raise_errors)
            found.update((k, v) for k, v in zip(keys, values, strict=True) if v is not FAILED)
        return found

    def _set_step(self, key: str, value: Any, ttl: TtlSpec) -> Set:
        e = self.engine
        full = e.keys.full(key)
        seconds = e.ttl.resolve(ttl)
        e.stats.sets += 1
        return Set(full, e.encode(value, seconds, key=full), seconds, lease_key(full))

    def set(self, key: str, value: Any, ttl: TtlSpec = DEFAULT) -> None:
        """Store ``value`` (any supported type, falsy ones included) for ``ttl`` seconds.

        Also voids any fill in flight for ``key``, so a slower reader cannot overwrite it.

        Raises:
            TypeError: the value holds a type the codec cannot store exactly.
            StoreUnavailable: only with ``on_error="raise"``.
        """
        step = self._set_step(key, value, ttl)
        self.engine.write(step, KEYS, [step.key])

    async def aset(self, key: str, value: Any, ttl: TtlSpec = DEFAULT) -> None:
        """``set`` for asyncio code."""
        step = self._set_step(key, value, ttl)
        await self.engine.awrite(step, KEYS, [step.key])

    def _set_many_step(self, mapping: Mapping[str, Any], ttl: TtlSpec) -> SetMany:
        items, void = [], []
        for key, value in mapping.items():
            one = self._set_step(key, value, ttl)
            items.append((one.key, one.value, one.ttl))
            void.append(lease_key(one.key))
        return SetMany(items, void)

    def set_many(self, mapping: Mapping[str, Any], ttl: TtlSpec = DEFAULT) -> None:
        """``set`` for each item (each with its own jitter); one round trip."""
        step = self._set_many_step(mapping, ttl)
        self.engine.write(step, KEYS, [key for key, _, _ in step.items])

    async def aset_many(self, mapping: Mapping[str, Any], ttl: TtlSpec = DEFAULT) -> None:
        """``set_many`` for asyncio code."""
        step = self._set_many_step(mapping, ttl)
        await self.engine.awrite(step, KEYS, [key for key, _, _ in step.items])

    def _delete_step(self, keys: Iterable[str]) -> Delete:
        return self.engine.delete_step(self.engine.keys.full(key) for key in keys)

    def delete(self, key: str) -> bool:
        """Remove ``key`` and void fills in flight for it; True if something was there.

        A failure is never raised (unless ``on_error="raise"``) but counted as
        ``invalidation_errors`` and logged at WARNING: the old value may live to its TTL.
        """
        step = self._delete_step([key])
        result = self.engine.write(step, KEYS, step.keys[::2], True)
        return result is not FAILED and result > 0

    async def adelete(self, key: str) -> bool:
        """``delete`` for asyncio code."""
        step = self._delete_step([key])
        result = await self.engine.awrite(step, KEYS, step.keys[::2], True)
        return result is not FAILED and result > 0

    #: ``invalidate(key)``: the same as ``delete``, named for the write path.
    invalidate = delete
    ainvalidate = adelete

    def delete_many(self, keys: Iterable[str]) -> int:
        """``delete`` for each key in one step; returns how many store keys existed."""
        step = self._delete_step(keys)
        result = self.engine.write(step, KEYS, step.keys[::2], True)
        return 0 if result is FAILED else int(result)

    async def adelete_many(self, keys: Iterable[str]) -> int:
        """``delete_many`` for asyncio code."""
        step = self._delete_step(keys)
        result = await self.engine.awrite(step, KEYS, step.keys[::2], True)
        return 0 if result is FAILED else int(result)

    def invalidate_tags(self, *tags: str) -> bool:
        """Invalidate every entry cached with any of ``tags``, in O(1) per tag.

        Each tag has a token in the store; an entry records the tokens it was computed
        under and is a miss once one of them changed. This call replaces the tokens, so
        every process sees it at once. Returns False (and counts an invalidation error)
        when the store failed.
        """
        if not tags:
            return True
        step = self.engine.invalidate_tags_step(tags)
        tag_keys = [key for key, _, _ in step.items]
        return self.engine.write(step, TAGS, tag_keys, True) is not FAILED

    async def ainvalidate_tags(self, *tags: str) -> bool:
        """``invalidate_tags`` for asyncio code."""
        if not tags:
            return True
        step = self.engine.invalidate_tags_step(tags)
        tag_keys = [key for key, _, _ in step.items]
        return await self.engine.awrite(step, TAGS, tag_keys, True) is not FAILED

    def publish_invalidation(
        self,
        keys: Iterable[str] = (),
        tags: Iterable[str] = (),
        *,
        signer: Signer,
        **options: Any,
    ) -> str:
        """Publish a signed invalidation event of ``keys`` and ``tags`` on this
        namespace's Redis stream, for every consumer (any process, any language) to apply
        (docs/events.md). Nothing is invalidated here. ``options``: those of
        :func:`cachelayer.events.publish_invalidation` (``stream``, ``origin``,
        ``maxlen``, ``client``). Returns the stream entry id.

        Raises:
            StoreUnavailable: the event could not be written (publishing again is safe).
        """
        from .events import publish_invalidation

        return publish_invalidation(self, keys, tags, signer=signer, **options)

    async def apublish_invalidation(
        self,
        keys: Iterable[str] = (),
        tags: Iterable[str] = (),
        *,
        signer: Signer,
        **options: Any,
    ) -> str:
        """``publish_invalidation`` for asyncio code."""
        from .events import apublish_invalidation

        return await apublish_invalidation(self, keys, tags, signer=signer, **options)

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

    # The overloads type the result by the loader's (a Fresh[T] loader gives a T); the
    # options are checked by the implementation's signature at run time.
    @overload
    def get_or_load(
        self, key: str, loader: Callable[[], Fresh[T]], ttl: TtlSpec = ..., **options: Any
    ) -> T: ...

    @overload
    def get_or_load(
        self, key: str, loader: Callable[[], T], ttl: TtlSpec = ..., **options: Any
    ) -> T: ...

    def get_or_load(  # type: ignore[misc]  # the overloads leave the options to run time
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
        value, flow = self._read(
            key, ttl, cache_errors, stale_ttl, stale_if_error, early_refresh, tags
        )
        return value if flow is None else self.engine.drive(flow, loader)

    @overload
    async def aget_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[Fresh[T]]],
        ttl: TtlSpec = ...,
        **options: Any,
    ) -> T: ...

    @overload
    async def aget_or_load(
        self, key: str, loader: Callable[[], Awaitable[T]], ttl: TtlSpec = ..., **options: Any
    ) -> T: ...

    @overload
    async def aget_or_load(
        self, key: str, loader: Callable[[], Fresh[T]], ttl: TtlSpec = ..., **options: Any
    ) -> T: ...

    @overload
    async def aget_or_load(
        self, key: str, loader: Callable[[], T], ttl: TtlSpec = ..., **options: Any
    ) -> T: ...

    async def aget_or_load(  # type: ignore[misc]  # (see get_or_load)
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
        value, flow = self._read(
            key, ttl, cache_errors, stale_ttl, stale_if_error, early_refresh, tags
        )
        return value if flow is None else await self.engine.adrive(flow, loader)

    def _read(
        self,
        key: str,
        ttl: TtlSpec,
        cache_errors: Mapping[type[BaseException], float] | None,
        stale_ttl: float,
        stale_if_error: float,
        early_refresh: float,
        tags: Sequence[str],
    ) -> tuple[Any, Flow | None]:
        """A get_or_load's local hit ``(value, None)``, or ``(None, its read-path flow)``."""
        options = self._options(
            ttl, cache_errors, stale_ttl, stale_if_error, early_refresh, tagged=bool(tags)
        )
        e = self.engine
        full = e.keys.full(key)
        value = self._local_hit(full)
        if value is not MISSING:
            return value, None
        tag_keys = [e.keys.tag(t) for t in tags]
        return None, read_through(e, full, options, tag_keys)

    def _options(
        self,
        ttl: TtlSpec,
        cache_errors: Mapping[type[BaseException], float] | None,
        stale_ttl: float,
        stale_if_error: float,
        early_refresh: float,
        tagged: bool = False,
    ) -> ReadOptions:
        policy = self.engine.ttl
        seconds = policy.check(ttl)
        options = ReadOptions(
            ttl,
            ErrorPolicy(cache_errors) if cache_errors else None,
            stale_ttl,
            stale_if_error,
            early_refresh,
        )
        longest = None if seconds is None else seconds * (1 + policy.jitter) + options.keep
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

        The wrapper has ``.warm(calls)`` and ``.awarm(calls)`` (load many entries ahead
        of traffic), ``.invalidate(*args, **kwargs)``, ``.ainvalidate(...)``,
        ``.uncached(*args, **kwargs)`` and ``.key(*args, **kwargs)``.

        Raises:
            ConfigurationError: at decoration time, for a bad TTL or option, or a template
                naming a parameter the function does not have.
        """
        options = self._options(
            ttl, cache_errors, stale_ttl, stale_if_error, early_refresh, tagged=bool(tags)
        )
        return make_cached(
            self.engine, options, key=key, tags=tags, refresh_after_write=refresh_after_write
        )

    def _warm_jobs(
        self,
        loaders: Mapping[str, Callable[[], Any]] | Iterable[tuple[str, Callable[[], Any]]],
        ttl: TtlSpec,
        stale_ttl: float,
    ) -> list[Job]:
        e = self.engine
        options = self._options(ttl, None, stale_ttl, 0.0, 1.0)
        pairs = loaders.items() if isinstance(loaders, Mapping) else loaders
        return [
            (functools.partial(warm, e, e.keys.full(key), options, ()), loader)
            for key, loader in pairs
        ]

    def warm(
        self,
        loaders: Mapping[str, Callable[[], Any]] | Iterable[tuple[str, Callable[[], Any]]],
        ttl: TtlSpec = DEFAULT,
        *,
        stale_ttl: float = 0.0,
        concurrency: int = 8,
        progress: Progress | None = None,
    ) -> WarmResult:
        """Load many keys ahead of traffic, ``concurrency`` at a time (threads).

        Each key is skipped if it holds a fresh value, else loaded with its loader and
        filled under its lease (as ``get_or_load`` fills): a key another process is
        loading is left to it, and a fill never overwrites a newer write. A loader's
        exception is counted in the result, not raised. For tagged entries warm the
        decorated function instead (``fn.warm(calls)``): its tags come from the calls.

        Args:
            loaders: ``{key: loader}``, or ``(key, loader)`` pairs.
            ttl: as for ``get_or_load``.
            stale_ttl: as for ``get_or_load``.
            concurrency: loads at most in flight at once.
            progress: ``progress(done, total)``, called after each key.

        Returns:
            A :class:`~cachelayer.WarmResult`: loaded, fresh, busy, superseded, failed,
            unavailable, seconds.
        """
        jobs = self._warm_jobs(loaders, ttl, stale_ttl)
        return run_sync(self.engine.runner, jobs, concurrency, progress)

    async def awarm(
        self,
        loaders: Mapping[str, Callable[[], Any]] | Iterable[tuple[str, Callable[[], Any]]],
        ttl: TtlSpec = DEFAULT,
        *,
        stale_ttl: float = 0.0,
        concurrency: int = 8,
        progress: Progress | None = None,
    ) -> WarmResult:
        """``warm`` for asyncio code: loads run as tasks; a loader may be async."""
        jobs = self._warm_jobs(loaders, ttl, stale_ttl)
        return await run_async(self.engine.runner, jobs, concurrency, progress)

    def clear(self) -> int:
        """Delete every entry of this namespace and version; returns how many."""
        step = Clear(self.engine.keys.prefix)
        result = self.engine.write(step, EVERYTHING, (), True)
        return 0 if result is FAILED else int(result)

    async def aclear(self) -> int:
        """``clear`` for asyncio code."""
        step = Clear(self.engine.keys.prefix)
        result = await self.engine.awrite(step, EVERYTHING, (), True)
        return 0 if result is FAILED else int(result)

    # -- locks -----------------------------------------------------------------------------

    def lock(
        self,
        name: str,
        timeout: float | None = None,
        blocking_timeout: float | None = None,
        sleep: float = 0.1,
    ) -> Lock:
        """A lock named ``name`` in this Cache's store, for threads, tasks and processes.

        The lock lives at a key derived from ``name``'s store key
        (``{<namespace>:v<version>:<name>}:lock``), which no cache key, tag or lease can
        spell, so a lock named like a cached key never touches the entry.
        Taking it is an atomic add of a random token; releasing it deletes the key only
        if it still holds that token. Unlike the cache calls, a lock never fails open:
        with the store down, acquiring raises
        :class:`~cachelayer.errors.StoreUnavailable`. :meth:`clear` deletes held locks
        too.

        Each holder makes its own Lock object (it remembers its token)::

            with cache.lock("report:42", timeout=60, blocking_timeout=5):
                build_report(42)

            async with cache.lock("report:42", timeout=60):
                await abuild_report(42)

        Args:
            name: the lock's name; any non-empty ``str``.
            timeout: seconds after which a held lock frees itself (a crashed holder
                cannot block others forever); ``None``: held until released.
            blocking_timeout: seconds ``acquire`` (and ``with``) waits at most; ``None``
                waits as long as it takes.
            sleep: seconds between attempts while waiting.

        Returns:
            A :class:`~cachelayer.Lock`, not yet acquired.

        Raises:
            TypeError: ``name`` is not a ``str``.
            ValueError: ``name`` is empty, or a timeout or ``sleep`` is out of range.
        """
        if not isinstance(name, str):
            raise TypeError(f"a lock name is a str, not {type(name).__name__}")
        if not name:
            raise ValueError("a lock name is a non-empty str")
        key = derived_key(self.engine.keys.full(name), "lock")
        return Lock(self.engine.runner, key, timeout, blocking_timeout, sleep)

    @property
    def store(self) -> Store:
        """The sync face of the store."""
        return self.engine.runner.store

    @property
    def astore(self) -> AsyncStore:
        """The asyncio face of the store."""
        return self.engine.runner.astore

    def wait_local(self, timeout: float = 5.0) -> bool:
        """Wait until the local tier is subscribed to its purges and serving (it starts
        a moment after the Cache, and pauses while the channel is lost). Returns False
        on timeout, or when there is no local tier. Reads never need to wait: until the
        tier serves, they go to the store."""
        return self._subscriber is not None and self._subscriber.wait_subscribed(timeout)

    def _describe(self) -> dict[str, Any]:
        """What a stats snapshot adds to the counters: namespace, breaker, local tier."""
        local = None
        tier, subscriber = self.engine.local, self._subscriber
        if tier is not None and subscriber is not None:
            local = LocalSnapshot(
                entries=len(tier),
                bytes=tier.bytes_used,
                evictions=tier.evictions,
                enabled=tier.enabled,
                purges=subscriber.purges,
                lag=HistogramSnapshot.of(subscriber.lag),
            )
        return {
            "namespace": self.engine.keys.namespace,
            "breaker": self.engine.runner.breaker.state,
            "local": local,
        }

    def close(self) -> None:
        """Stop the local tier's subscriber, finish background refreshes, then close the
        store's connections."""
        unregister(self)
        if self._unpublish is not None:
            self._unpublish()
        if self._subscriber is not None:
            self._subscriber.stop()
        self.engine.runner.close()

    async def aclose(self) -> None:
        """Stop the local tier's subscriber, cancel this loop's background refreshes,
        then close both faces' connections."""
        unregister(self)
        if self._unpublish is not None:
            await asyncio.to_thread(self._unpublish)
        if self._subscriber is not None:
            await asyncio.to_thread(self._subscriber.stop)
        await self.engine.runner.aclose()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
