"""``@cache.cached``: cache-aside for a function, its key built from the call's arguments.

The wrapper is a plain function (so it binds as a method, and ``inspect`` and frameworks
see the wrapped signature) that carries ``invalidate``, ``ainvalidate``, ``uncached`` and
``key``. A coroutine function gets a coroutine wrapper. Both run the one read path in
``_readpath.py``; only the shell (blocking or awaiting) differs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
)

from ._autotypes import register_return_types
from ._keys import call_key_function
from ._local import MISSING
from ._methods import CachedMethod, looks_like_method
from ._options import ReadOptions
from ._purge import KEYS
from ._readpath import FRESH, first_look, read_through, refresh, warm
from ._steps import FAILED, Flow
from ._warm import Job, Progress, WarmResult, as_args, run_async, run_sync

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["AsyncCachedFunction", "CacheDecorator", "CachedFunction", "make_cached"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
S = TypeVar("S")


class CachedFunction(Protocol, Generic[P, R]):
    """A function decorated with ``@cache.cached``."""

    __wrapped__: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the entry for these arguments (and void fills in flight for it)."""
        ...

    async def ainvalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """``invalidate`` for asyncio code."""
        ...

    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function itself, bypassing the cache (nothing read or written)."""
        ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The store key these arguments map to."""
        ...

    def warm(
        self, calls: Iterable[Any], *, concurrency: int = 8, progress: Progress | None = None
    ) -> WarmResult:
        """Load the entries of many calls ahead of traffic, ``concurrency`` at a time.

        Each item of ``calls`` is one call's arguments: a tuple of positional arguments,
        or a single argument. A key that holds a fresh value is skipped; the others are
        loaded and filled under their leases, so a key another process is loading is
        left to it and a fill never overwrites a newer write. A loader's exception is
        counted, not raised. ``progress(done, total)`` is called after each key.
        """
        ...

    async def awarm(
        self, calls: Iterable[Any], *, concurrency: int = 8, progress: Progress | None = None
    ) -> WarmResult:
        """``warm`` for asyncio code (loads run as tasks, or in a thread for a def)."""
        ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> CachedFunction[P, R]: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[S, P2], R], instance: S, owner: type[Any] | None = None
    ) -> CachedFunction[P2, R]:
        """On an instance, a method binds it: ``repo.item(1)``, ``repo.item.invalidate(1)``."""
        ...


class AsyncCachedFunction(Protocol, Generic[P, R]):
    """A coroutine function decorated with ``@cache.cached``."""

    __wrapped__: Callable[P, Coroutine[Any, Any, R]]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...

    async def ainvalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...

    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]: ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str: ...

    def warm(
        self, calls: Iterable[Any], *, concurrency: int = 8, progress: Progress | None = None
    ) -> WarmResult: ...

    async def awarm(
        self, calls: Iterable[Any], *, concurrency: int = 8, progress: Progress | None = None
    ) -> WarmResult: ...

    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> AsyncCachedFunction[P, R]: ...

    @overload
    def __get__(
        self: AsyncCachedFunction[Concatenate[S, P2], R],
        instance: S,
        owner: type[Any] | None = None,
    ) -> AsyncCachedFunction[P2, R]: ...


class CacheDecorator(Protocol):
    """What ``cache.cached(...)`` returns: a decorator for def and async def alike."""

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> AsyncCachedFunction[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> CachedFunction[P, R]: ...


def make_cached(
    engine: Engine,
    options: ReadOptions,
    *,
    key: str | Callable[..., str] | None,
    tags: Sequence[str],
    refresh_after_write: bool,
) -> CacheDecorator:
    """Build the decorator; validates everything it can before the first call."""
    full = engine.keys.full
    tag = engine.keys.tag
    call, acall, drive, adrive = engine.call, engine.acall, engine.drive, engine.adrive
    get, aget = engine.runner.get, engine.runner.aget
    refresher = engine.runner.refresher
    local = engine.local

    def decorate(target: Any) -> Any:
        # classmethod/staticmethod objects: cache the function they hold, wrap it again.
        if isinstance(target, staticmethod):
            return staticmethod(decorate_function(target.__func__))
        if isinstance(target, classmethod):
            inner = decorate_function(target.__func__, skip=1)
            return CachedMethod(inner, is_async=_is_async(target.__func__), of_class=True)
        method = looks_like_method(target)
        wrapper = decorate_function(target, skip=int(method))
        if method:
            return CachedMethod(wrapper, is_async=_is_async(target))
        return wrapper

    def decorate_function(func: Callable[..., Any], skip: int = 0) -> Any:
        # Types the annotation names are registered now (-> UserOut just works), and one
        # no codec can store is refused now rather than after the first load.
        register_return_types(engine.serializer.registry, func)
        keyfn = call_key_function(func, key, skip)
        tagfns = [call_key_function(func, t, skip) for t in tags]
        is_async = _is_async(func)
        # Counted in the function's own block of the Cache's metrics (docs/observability.md).
        fe = engine.scoped(f"{func.__module__}.{func.__qualname__}")
        stats = fe.stats
        # A key function is the user's: it may read state the arguments do not show.
        key_of = remembered(keyfn, full) if not callable(key) else _built(keyfn, full)

        def store_key(*args: Any, **kwargs: Any) -> str:
            return key_of(args, kwargs)

        def flow(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Flow:
            tag_keys = [tag(fn(args, kwargs)) for fn in tagfns] if tagfns else ()
            return read_through(fe, key_of(args, kwargs), options, tag_keys)

        def rewarm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            """refresh_after_write: load the entry again in the background."""
            store = key_of(args, kwargs)
            again = refresh(fe, store, options, [tag(fn(args, kwargs)) for fn in tagfns])
            loader = functools.partial(func, *args, **kwargs)
            if is_async:
                refresher.spawn(store, functools.partial(adrive, again, loader))
            else:
                refresher.submit(store, functools.partial(drive, again, loader))

        def invalidate(*args: Any, **kwargs: Any) -> bool:
            store = key_of(args, kwargs)
            stats.invalidations += 1
            done = call(engine.delete_step([store]), False, True)
            if engine.purges:
                engine.purge(KEYS, [store])
            if refresh_after_write and not is_async:  # async functions rewarm in ainvalidate
                rewarm(args, kwargs)
            return done is not FAILED and done > 0

        async def ainvalidate(*args: Any, **kwargs: Any) -> bool:
            store = key_of(args, kwargs)
            stats.invalidations += 1
            done = await acall(engine.delete_step([store]), False, True)
            if engine.purges:
                await engine.apurge(KEYS, [store])
            if refresh_after_write:
                rewarm(args, kwargs)
            return done is not FAILED and done > 0

        # Untagged calls read the key first and answer a plain fresh hit without starting
        # the read-path flow (one GET, one decode); anything else continues in the flow
        # with what was read. (Tagged calls read value and tokens together in the flow.)
        wrapper: Any
        if local is not None:
            wrapper = _local_wrapper(fe, func, key_of, tagfns, options, is_async)
        elif is_async:

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if tagfns:
                    return await adrive(flow(args, kwargs), lambda: func(*args, **kwargs))
                key = key_of(args, kwargs)
                raw = await aget(key)
                entry, state = first_look(fe, raw, None, options, key=key)
                if state == FRESH and entry is not None and not entry.negative:
                    stats.hits += 1
                    return entry.value
                rest = read_through(fe, key, options, (), (raw, entry, state))
                return await adrive(rest, lambda: func(*args, **kwargs))

            wrapper = async_wrapper
        else:

            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                if tagfns:
                    return drive(flow(args, kwargs), lambda: func(*args, **kwargs))
                key = key_of(args, kwargs)
                raw = get(key)
                entry, state = first_look(fe, raw, None, options, key=key)
                if state == FRESH and entry is not None and not entry.negative:
                    stats.hits += 1
                    return entry.value
                rest = read_through(fe, key, options, (), (raw, entry, state))
                return drive(rest, lambda: func(*args, **kwargs))

            wrapper = sync_wrapper
        functools.update_wrapper(wrapper, func)
        wrapper.invalidate = invalidate
        wrapper.ainvalidate = ainvalidate

        def jobs(calls: Iterable[Any]) -> list[Job]:
            made: list[Job] = []
            for args in as_args(calls):
                store = key_of(args, {})  # built now: a bad argument raises at once
                tag_keys = [tag(fn(args, {})) for fn in tagfns]
                made.append(
                    (
                        functools.partial(warm, fe, store, options, tag_keys),
                        functools.partial(func, *args),
                    )
                )
            return made

        def warm_calls(
            calls: Iterable[Any], *, concurrency: int = 8, progress: Progress | None = None
        ) -> WarmResult:
            if is_async:
                raise TypeError(
                    f"{func.__qualname__} is an async function: use await "
                    f"{func.__qualname__}.awarm(...)"
                )
            return run_sync(engine.runner, jobs(calls), concurrency, progress)

        async def awarm_calls(
            calls: Iterable[Any], *, concurrency: int = 8, progress: Progress | None = None
        ) -> WarmResult:
            if not is_async:  # a def's loads block: run them on threads, not in the loop
                work = jobs(calls)
                return await asyncio.to_thread(
                    run_sync, engine.runner, work, concurrency, progress
                )
            return await run_async(engine.runner, jobs(calls), concurrency, progress)

        wrapper.uncached = func
        wrapper.key = store_key
        wrapper.warm = warm_calls
        wrapper.awarm = awarm_calls
        return wrapper

    return cast(CacheDecorator, decorate)


def _local_wrapper(
    engine: Engine,
    func: Callable[..., Any],
    full: KeyOf,
    tagfns: Sequence[KeyOf],
    options: ReadOptions,
    is_async: bool,
) -> Any:
    """The wrapper of a Cache with a local tier: a local hit first, then the store path
    (which offers what it reads back to the tier; docs/local.md).

    """
    local = engine.local
    assert local is not None
    lookup, tag, stats = local.get, engine.keys.tag, engine.stats
    get, aget, drive, adrive = (
        engine.runner.get,
        engine.runner.aget,
        engine.drive,
        engine.adrive,
    )

    def rest(key: str, raw: Any, since: int) -> tuple[Any, Flow | None]:
        # After an untagged store read: a plain fresh hit is kept and answered here;
        # anything else continues in the read path with what was read.
        entry, state = first_look(engine, raw, None, options, key=key)
        if state == FRESH and entry is not None and not entry.negative:
            stats.hits += 1
            local.keep_entry(key, entry, engine.now_ms(), since)
            return entry.value, None
        return None, read_through(engine, key, options, (), (raw, entry, state))

    if is_async:

        async def async_local(*args: Any, **kwargs: Any) -> Any:
            key = full(args, kwargs)
            value = lookup(key)
            if value is not MISSING:
                stats.local_hits += 1  # (and so in hits: Stats.count)
                return value
            if tagfns:
                tag_keys = [tag(fn(args, kwargs)) for fn in tagfns]
                flow = read_through(engine, key, options, tag_keys)
                return await adrive(flow, lambda: func(*args, **kwargs))
            since = local.seq
            value, after = rest(key, await aget(key), since)
            if after is None:
                return value
            return await adrive(after, lambda: func(*args, **kwargs))

        return async_local

    def sync_local(*args: Any, **kwargs: Any) -> Any:
        key = full(args, kwargs)
        value = lookup(key)
        if value is not MISSING:
            stats.local_hits += 1  # (and so in hits: Stats.count)
            return value
        if tagfns:
            tag_keys = [tag(fn(args, kwargs)) for fn in tagfns]
            flow = read_through(engine, key, options, tag_keys)
            return drive(flow, lambda: func(*args, **kwargs))
        since = local.seq
        value, after = rest(key, get(key), since)
        if after is None:
            return value
        return drive(after, lambda: func(*args, **kwargs))

    return sync_local


#: store keys a decorated function remembers before starting over
_KEY_MEMO_SIZE = 4096

#: ``(args, kwargs) -> key``
KeyOf = Callable[[tuple[Any, ...], Mapping[str, Any]], str]


def _built(keyfn: KeyOf, build: Callable[[str], str]) -> KeyOf:
    """The store key of a call, built every time."""
    return lambda args, kwargs: build(keyfn(args, kwargs))


def remembered(keyfn: KeyOf, build: Callable[[str], str]) -> KeyOf:
    """The store key of a call, remembered for calls whose positional arguments are all
    exactly ``int`` or ``str`` (a template or automatic key: the same arguments always
    give the same key), so a hit skips building it. Only those two types: equal tuples
    of them are identical, where ``1``, ``True`` and ``1.0`` are equal but must give
    different keys. At most ``_KEY_MEMO_SIZE`` are kept, then the memo starts over.
    """
    memory: dict[Any, str] = {}

    def key_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        if kwargs:
            return build(keyfn(args, kwargs))
        for arg in args:  # (first: other arguments may not even hash)
            kind = type(arg)
            if kind is not int and kind is not str:
                return build(keyfn(args, kwargs))
        key = memory.get(args)
        if key is None:
            key = build(keyfn(args, kwargs))
            if len(memory) >= _KEY_MEMO_SIZE:
                memory.clear()
            memory[args] = key
        return key

    return key_of


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func)
