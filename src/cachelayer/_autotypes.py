"""Types a team caches on day one, without writing dump/load functions.

- :func:`default_codec_for`: how to store a class the registry can handle by itself --
  a dataclass (its fields), a pydantic v2 model (``model_dump``/``model_validate``), an
  ``Enum`` (its member's value).
- :func:`register_standard_types`: ``Counter``, ``OrderedDict``, ``deque`` and
  ``defaultdict`` (with a built-in factory), registered in every Cache's registry.
- :func:`register_return_types`: at decoration time, the classes a function's return
  annotation names (``-> UserOut``, ``-> list[Item] | None``) are registered, so they just
  work; an annotation naming a class no codec can store is refused then, not at the first
  call (after the query ran).

Nothing here rebuilds a class named only by stored data: every class is registered by
the application's own code (its annotations or ``register_type``), under its qualified
name, and only registered names are rebuilt.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import enum
import sys
import types
import typing
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._codecs import TypeRegistry

__all__ = ["default_codec_for", "register_return_types", "register_standard_types"]

Dump = Callable[[Any], Any]
Load = Callable[[Any], Any]

#: Classes the codecs store natively.
NATIVE: tuple[type, ...] = (
    type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset,
    dt.datetime, dt.date, dt.time, dt.timedelta, Decimal, UUID,
)  # fmt: skip

# defaultdict factories that can be named in stored data and rebuilt safely.
_FACTORIES: dict[str, Callable[[], Any]] = {
    f.__name__: f for f in (list, dict, set, int, float, str, tuple, frozenset, bytes)
}


def _is_pydantic_model(cls: type) -> bool:
    pydantic = sys.modules.get("pydantic")  # never imported here: only if the app has
    return pydantic is not None and isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)


def default_codec_for(cls: type) -> tuple[Dump, Load] | None:
    """``(dump, load)`` for a class the registry can store without help, or None."""
    if dataclasses.is_dataclass(cls):
        fields = [f.name for f in dataclasses.fields(cls)]
        return (lambda obj: {f: getattr(obj, f) for f in fields}), (lambda data: cls(**data))
    if _is_pydantic_model(cls):
        model: Any = cls
        return (lambda obj: obj.model_dump(mode="python")), model.model_validate
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return (lambda member: member.value), cls
    return None


def _dump_defaultdict(d: collections.defaultdict[Any, Any]) -> Any:
    factory = d.default_factory
    name = "" if factory is None else getattr(factory, "__name__", "")
    if factory is not None and _FACTORIES.get(name) is not factory:
        raise TypeError(
            f"cachelayer cannot store a defaultdict whose default_factory is {factory!r}: "
            f"only none or a built-in type ({', '.join(sorted(_FACTORIES))}) can be rebuilt"
        )
    return [name, list(d.items())]


def _load_defaultdict(data: Any) -> collections.defaultdict[Any, Any]:
    name, items = data
    factory = _FACTORIES[name] if name else None  # KeyError: not ours, a decode error
    return collections.defaultdict(factory, items)


def register_standard_types(registry: TypeRegistry) -> None:
    """``Counter``, ``OrderedDict``, ``deque`` and ``defaultdict`` (built-in factories)."""
    registry.register(
        collections.Counter, name="collections.Counter", dump=dict, load=collections.Counter
    )
    registry.register(
        collections.OrderedDict,
        name="collections.OrderedDict",
        dump=lambda d: list(d.items()),
        load=collections.OrderedDict,
    )
    registry.register(
        collections.deque,
        name="collections.deque",
        dump=lambda d: [list(d), d.maxlen],
        load=lambda data: collections.deque(data[0], data[1]),
    )
    registry.register(
        collections.defaultdict,
        name="collections.defaultdict",
        dump=_dump_defaultdict,
        load=_load_defaultdict,
    )


def _classes(annotation: Any) -> list[Any]:
    """The classes an annotation names, through unions and generic containers."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _classes(typing.get_args(annotation)[0])
    if origin is not None:
        found = [] if origin in (typing.Union, types.UnionType) else [origin]
        for arg in typing.get_args(annotation):
            found += _classes(arg)
        return found
    return [annotation] if isinstance(annotation, type) else []


def _storable(cls: type, registry: TypeRegistry) -> bool:
    if cls in NATIVE or registry.lookup_type(cls) is not None:
        return True
    if typing.is_typeddict(cls) or cls.__module__ in ("builtins", "typing", "collections.abc"):
        return True  # plain dicts at run time, or a type we cannot judge: let it be
    # An interface (a Protocol, an ABC): the run-time class decides.
    return bool(getattr(cls, "_is_protocol", False) or getattr(cls, "__abstractmethods__", None))


def register_return_types(registry: TypeRegistry, func: Callable[..., Any]) -> None:
    """Register the dataclasses, pydantic models and Enums ``func``'s return annotation
    names; refuse a class no codec can store.

    An annotation that cannot be resolved (a forward reference to a class defined later)
    is left alone: the value's type is checked when it is stored, as without it.

    Raises:
        ConfigurationError: the annotation names a class that is neither stored natively,
            registered, nor one of the kinds above.
    """
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # NameError for a forward reference, or an odd annotation
        return
    annotation = hints.get("return")
    if annotation is None:
        return
    if typing.get_origin(annotation) in (collections.abc.Awaitable, collections.abc.Coroutine):
        annotation = typing.get_args(annotation)[-1]
    for cls in _classes(annotation):
        if _storable(cls, registry):
            continue
        codec = default_codec_for(cls)
        if codec is None:
            raise ConfigurationError(
                f"{func.__qualname__} returns {cls.__module__}.{cls.__qualname__}, which "
                "cachelayer cannot store: make it a dataclass or a pydantic model, register "
                "it with cache.register_type(..., dump=, load=), or cache a supported "
                "value instead (see docs/values.md)"
            )
        with contextlib.suppress(ValueError):  # its name is another class's: left as is
            registry.register(cls, dump=codec[0], load=codec[1])
