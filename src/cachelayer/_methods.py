"""Decorated methods: ``@cache.cached`` on a method, classmethod or staticmethod.

A decorated function is a plain function, so frameworks see its signature and whether
it is a coroutine function. On a method that is not enough: ``repo.item.invalidate(1)``
would reach the function's ``invalidate`` without ``repo``. So a function defined in a
class body is wrapped in :class:`CachedMethod`, a descriptor: on an instance it gives a
:class:`BoundCached` whose ``__call__``, ``invalidate``, ``key``, ``warm``, ... all pass
the instance first, as a bound method does; on the class it gives the plain function.

An automatic key names the class of ``self`` (or ``cls``), so a subclass that inherits
a method never shares its base's entries, and names the instance itself when its class
defines ``__cache_key__()`` (a tenant's repository keys per tenant); other instances of a
class share a call's entries. A template names only what it says: ``{self}`` puts the
instance in (through ``__cache_key__()``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from ._warm import Progress, WarmResult, as_args

__all__ = ["BoundCached", "CachedMethod", "looks_like_method"]


def looks_like_method(func: Any) -> bool:
    """Was ``func`` defined in a class body, with a first parameter named ``self`` (or
    ``cls``) to bind? (A staticmethod's first parameter is an argument like any other:
    it must stay in the key, so the name decides, not the position.)"""
    owner, _, _ = getattr(func, "__qualname__", "").rpartition(".")
    if not owner or owner.endswith("<locals>"):
        return False
    params = list(inspect.signature(func).parameters.values())
    return (
        bool(params)
        and params[0].name in ("self", "cls")
        and params[0].kind
        in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


class BoundCached:
    """A decorated method bound to its instance (or class): every call and helper gets
    the instance as its first argument."""

    __slots__ = ("__func__", "__self__")

    def __init__(self, func: Any, instance: Any) -> None:
        self.__func__ = func
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        result: bool = self.__func__.invalidate(self.__self__, *args, **kwargs)
        return result

    async def ainvalidate(self, *args: Any, **kwargs: Any) -> bool:
        result: bool = await self.__func__.ainvalidate(self.__self__, *args, **kwargs)
        return result

    def uncached(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__.uncached(self.__self__, *args, **kwargs)

    def key(self, *args: Any, **kwargs: Any) -> str:
        result: str = self.__func__.key(self.__self__, *args, **kwargs)
        return result

    def _calls(self, calls: Iterable[Any]) -> list[tuple[Any, ...]]:
        return [(self.__self__, *args) for args in as_args(calls)]

    def warm(
        self, calls: Iterable[Any], *, concurrency: int = 8, progress: Progress | None = None
    ) -> WarmResult:
        result: WarmResult = self.__func__.warm(
            self._calls(calls), concurrency=concurrency, progress=progress
        )
        return result

    async def awarm(
        self, calls: Iterable[Any], *, concurrency: int = 8, progress: Progress | None = None
    ) -> WarmResult:
        result: WarmResult = await self.__func__.awarm(
            self._calls(calls), concurrency=concurrency, progress=progress
        )
        return result

    @property
    def __wrapped__(self) -> Any:
        return self.__func__.__wrapped__

    @property
    def __name__(self) -> str:
        name: str = self.__func__.__name__
        return name

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        doc: str | None = self.__func__.__doc__
        return doc

    @property
    def __signature__(self) -> inspect.Signature:
        signature = inspect.signature(self.__func__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])

    def __repr__(self) -> str:
        return f"<bound cached {self.__func__.__qualname__} of {self.__self__!r:.60}>"


class AsyncBoundCached(BoundCached):
    """:class:`BoundCached` of a coroutine function: its ``__call__`` is one too, so
    ``inspect.iscoroutinefunction(obj.__call__)`` (FastAPI, Starlette) sees it."""

    __slots__ = ()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self.__func__(self.__self__, *args, **kwargs)


class CachedMethod:
    """The descriptor a decorated method is: the plain decorated function on the class,
    a :class:`BoundCached` on an instance (on the class too, for a classmethod)."""

    def __init__(self, func: Any, *, is_async: bool, of_class: bool = False) -> None:
        self.__func__ = func
        self._bound = AsyncBoundCached if is_async else BoundCached
        self._of_class = of_class
        self.__wrapped__ = func.__wrapped__
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__doc__ = func.__doc__

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if self._of_class:
            return self._bound(self.__func__, owner if owner is not None else type(instance))
        if instance is None:
            return self.__func__
        return self._bound(self.__func__, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(*args, **kwargs)
