"""How a read behaves: the options of one cached function, negative caching, and the
freshness a loader may state for its own value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from ._policy import TtlSpec
from .errors import ConfigurationError

__all__ = ["ErrorPolicy", "Fresh", "ReadOptions"]

T = TypeVar("T")


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
        """The name a negative entry stores for ``exc_type``."""
        return f"{exc_type.__module__}.{exc_type.__qualname__}"

    def match(self, exc: BaseException) -> type[BaseException] | None:
        """The configured type ``exc`` is an instance of, or None."""
        for exc_type in self.ttls:
            if isinstance(exc, exc_type):
                return exc_type
        return None

    @staticmethod
    def well_formed(stored: Any) -> bool:
        """Whether ``stored`` has the shape of a negative entry's value:
        ``{"error": str, "args": list}`` and nothing else."""
        return (
            type(stored) is dict
            and len(stored) == 2
            and type(stored.get("error")) is str
            and type(stored.get("args")) is list
        )

    def rebuild(self, stored: Any) -> BaseException | None:
        """The exception a negative entry stands for, or None if it is not one of ours
        (another type, or not a negative entry's shape: stored bytes decide nothing)."""
        if not self.well_formed(stored):
            return None
        exc_type = self._by_name.get(stored["error"])
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

    Immutable once built: one object serves every call of a decorated function, in every
    thread, so nothing may change it under a read in flight.

    Args:
        ttl: freshness: seconds, a TTL class, ``None`` (never expires) or DEFAULT.
        errors: negative caching, or None.
        stale_ttl: seconds an expired value is still served (at once) while one
            background refresh runs (stale-while-revalidate).
        stale_if_error: seconds after expiry during which, if the load fails, the expired
            value is returned instead of the error.
        early_refresh: XFetch's beta; a hit refreshes in the background with a
            probability that rises as expiry nears, more eagerly for slow loads. 0 = off.

    Raises:
        ConfigurationError: a window or beta that is not a number >= 0.
    """

    __slots__ = ("early_refresh", "errors", "keep", "stale_if_error", "stale_ttl", "ttl")

    ttl: TtlSpec
    errors: ErrorPolicy | None
    stale_ttl: float
    stale_if_error: float
    early_refresh: float
    #: seconds an entry stays in the store after it stops being fresh
    keep: float

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
        init = object.__setattr__
        init(self, "ttl", ttl)
        init(self, "errors", errors)
        init(self, "stale_ttl", float(stale_ttl))
        init(self, "stale_if_error", float(stale_if_error))
        init(self, "early_refresh", float(early_refresh))
        init(self, "keep", max(self.stale_ttl, self.stale_if_error))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ReadOptions are immutable (tried to set {name!r})")

    def __repr__(self) -> str:
        return (
            f"ReadOptions(ttl={self.ttl!r}, stale_ttl={self.stale_ttl}, "
            f"stale_if_error={self.stale_if_error}, early_refresh={self.early_refresh})"
        )


class Fresh(Generic[T]):
    """A loader's value with the freshness the loader decided for it.

    A loader (of ``get_or_load`` or a decorated function) that knows how long its value
    stays valid -- an HTTP response's ``max-age``, a token's expiry -- returns
    ``Fresh(value, ttl=...)`` instead of the bare value. The caller gets ``value``; the
    entry is fresh for at most ``ttl`` seconds (jitter only ever shortens it) instead of
    the call's ``ttl``, and the store keeps it ``stale_ttl`` seconds longer, capped by the
    call's own stale window (``stale_ttl``/``stale_if_error``), which still decides when a
    stale entry is served.

    Args:
        value: what the loader computed.
        ttl: seconds the value is fresh (> 0), or None for no expiry.
        stale_ttl: seconds after that during which it may be served stale (>= 0).

    Raises:
        ConfigurationError: a ttl that is not > 0 or None, or a negative stale_ttl.
    """

    __slots__ = ("stale_ttl", "ttl", "value")

    def __init__(self, value: T, ttl: float | None, stale_ttl: float = 0.0) -> None:
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0
        ):
            raise ConfigurationError(f"Fresh(ttl={ttl!r}) must be seconds > 0 or None")
        if isinstance(stale_ttl, bool) or not isinstance(stale_ttl, (int, float)) or stale_ttl < 0:
            raise ConfigurationError(f"Fresh(stale_ttl={stale_ttl!r}) must be seconds >= 0")
        self.value = value
        self.ttl = None if ttl is None else float(ttl)
        self.stale_ttl = float(stale_ttl)

    def __repr__(self) -> str:
        return f"Fresh({self.value!r:.60}, ttl={self.ttl}, stale_ttl={self.stale_ttl})"
