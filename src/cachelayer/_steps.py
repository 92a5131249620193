"""The steps a flow yields, as typed objects, and the markers sent back into flows.

A *flow* is a generator that decides and never does I/O: it yields a step, and the shell
that drives it (``_runner.StoreRunner``, sync or async) performs the step and sends the
result back. Store steps name one method of the :class:`~cachelayer.backends.Store`
protocol and carry its arguments; each knows how to run itself on either face of a
store, so mypy checks every call against the protocol, and adding a store operation is
the protocol, one method per store, one step class here. The other steps ask the shell
for what only it can do in its own flavour (threads or asyncio): call the loader, sleep,
join an in-process load, publish an outcome to followers, start a background refresh.

A store step that failed is answered with :data:`FAILED`, never with an exception.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    from ._envelope import Entry
    from .backends.base import AsyncPublisher, AsyncStore, Item, Publisher, Store

__all__ = [
    "FAILED",
    "LEAD",
    "LOAD",
    "Add",
    "Broadcast",
    "Clear",
    "Delete",
    "DeleteIf",
    "Fill",
    "Flow",
    "Get",
    "GetMany",
    "JoinFlight",
    "KeepLocal",
    "Keys",
    "Lease",
    "Load",
    "Publish",
    "Refresh",
    "Set",
    "SetMany",
    "Sleep",
    "Step",
    "StoreStep",
    "Swap",
]


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Sent into a flow in place of the result of a store step that failed.
FAILED: Any = _Marker("FAILED")
#: Sent back for :class:`JoinFlight` when this caller leads the load.
LEAD: Any = _Marker("LEAD")


class Step:
    """Base of everything a flow yields."""

    __slots__ = ()

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{name}={getattr(self, name)!r:.40}" for name in names)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        # Steps compare by value, so a test can assert the exact step a flow yields.
        names: tuple[str, ...] = self.__slots__
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n in names
        )

    __hash__ = None  # type: ignore[assignment]


class StoreStep(Step):
    """One call of a store method; ``run``/``arun`` make it on the sync/async face."""

    __slots__ = ()
    #: the store method's name (for logs and errors)
    name: ClassVar[str]
    #: a leader's published value may rest on this step's effect (see ``_flight.py``)
    outcome: ClassVar[bool] = False

    def run(self, store: Store) -> Any:
        raise NotImplementedError

    def arun(self, store: AsyncStore) -> Awaitable[Any]:
        raise NotImplementedError


class Get(StoreStep):
    """``store.get(key)``."""

    __slots__ = ("key",)
    name = "get"
    outcome = True

    def __init__(self, key: str) -> None:
        self.key = key

    def run(self, store: Store) -> bytes | None:
        return store.get(self.key)

    def arun(self, store: AsyncStore) -> Awaitable[bytes | None]:
        return store.get(self.key)


class GetMany(StoreStep):
    """``store.get_many(keys)``."""

    __slots__ = ("keys",)
    name = "get_many"
    outcome = True

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = keys

    def run(self, store: Store) -> list[bytes | None]:
        return store.get_many(self.keys)

    def arun(self, store: AsyncStore) -> Awaitable[list[bytes | None]]:
        return store.get_many(self.keys)


class Set(StoreStep):
    """``store.set(key, value, ttl, void)``."""

    __slots__ = ("key", "ttl", "value", "void")
    name = "set"

    def __init__(self, key: str, value: bytes, ttl: float | None, void: str | None) -> None:
        self.key, self.value, self.ttl, self.void = key, value, ttl, void

    def run(self, store: Store) -> None:
        store.set(self.key, self.value, self.ttl, self.void)

    def arun(self, store: AsyncStore) -> Awaitable[None]:
        return store.set(self.key, self.value, self.ttl, self.void)


class SetMany(StoreStep):
    """``store.set_many(items, void)``."""

    __slots__ = ("items", "void")
    name = "set_many"

    def __init__(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        self.items, self.void = items, void

    def run(self, store: Store) -> None:
        store.set_many(self.items, self.void)

    def arun(self, store: AsyncStore) -> Awaitable[None]:
        return store.set_many(self.items, self.void)


class Delete(StoreStep):
    """``store.delete(keys)``."""

    __slots__ = ("keys",)
    name = "delete"

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = keys

    def run(self, store: Store) -> int:
        return store.delete(self.keys)

    def arun(self, store: AsyncStore) -> Awaitable[int]:
        return store.delete(self.keys)


class Add(StoreStep):
    """``store.add(key, value, ttl)``."""

    __slots__ = ("key", "ttl", "value")
    name = "add"

    def __init__(self, key: str, value: bytes, ttl: float | None) -> None:
        self.key, self.value, self.ttl = key, value, ttl

    def run(self, store: Store) -> bool:
        return store.add(self.key, self.value, self.ttl)

    def arun(self, store: AsyncStore) -> Awaitable[bool]:
        return store.add(self.key, self.value, self.ttl)


class Lease(StoreStep):
    """``store.lease(key, lease, token, ttl)``."""

    __slots__ = ("key", "lease", "token", "ttl")
    name = "lease"
    outcome = True

    def __init__(self, key: str, lease: str, token: bytes, ttl: float) -> None:
        self.key, self.lease, self.token, self.ttl = key, lease, token, ttl

    def run(self, store: Store) -> bytes | bool:
        return store.lease(self.key, self.lease, self.token, self.ttl)

    def arun(self, store: AsyncStore) -> Awaitable[bytes | bool]:
        return store.lease(self.key, self.lease, self.token, self.ttl)


class Fill(StoreStep):
    """``store.fill(key, value, ttl, lease, token)``."""

    __slots__ = ("key", "lease", "token", "ttl", "value")
    name = "fill"
    outcome = True

    def __init__(
        self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes
    ) -> None:
        self.key, self.value, self.ttl, self.lease, self.token = key, value, ttl, lease, token

    def run(self, store: Store) -> bool:
        return store.fill(self.key, self.value, self.ttl, self.lease, self.token)

    def arun(self, store: AsyncStore) -> Awaitable[bool]:
        return store.fill(self.key, self.value, self.ttl, self.lease, self.token)


class Swap(StoreStep):
    """``store.swap(key, expected, value, ttl, void, keep_ttl)``: compare-and-set."""

    __slots__ = ("expected", "keep_ttl", "key", "ttl", "value", "void")
    name = "swap"

    def __init__(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> None:
        self.key, self.expected, self.value, self.ttl = key, expected, value, ttl
        self.void, self.keep_ttl = void, keep_ttl

    def run(self, store: Store) -> bool:
        return store.swap(self.key, self.expected, self.value, self.ttl, self.void, self.keep_ttl)

    def arun(self, store: AsyncStore) -> Awaitable[bool]:
        return store.swap(self.key, self.expected, self.value, self.ttl, self.void, self.keep_ttl)


class DeleteIf(StoreStep):
    """``store.delete_if(key, token)``: delete only if ``key`` holds exactly ``token``."""

    __slots__ = ("key", "token")
    name = "delete_if"

    def __init__(self, key: str, token: bytes) -> None:
        self.key, self.token = key, token

    def run(self, store: Store) -> bool:
        return store.delete_if(self.key, self.token)

    def arun(self, store: AsyncStore) -> Awaitable[bool]:
        return store.delete_if(self.key, self.token)


class Keys(StoreStep):
    """``store.scan(pattern)`` walked to the end: the matching keys, each once, as a list.

    (Redis ``SCAN`` may return a key twice; the list holds it once, in first-seen order.)
    """

    __slots__ = ("pattern",)
    name = "scan"

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def run(self, store: Store) -> list[str]:
        return list(dict.fromkeys(store.scan(self.pattern)))

    async def arun(self, store: AsyncStore) -> list[str]:
        return list(dict.fromkeys([key async for key in store.scan(self.pattern)]))


class Clear(StoreStep):
    """``store.clear(prefix)``."""

    __slots__ = ("prefix",)
    name = "clear"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def run(self, store: Store) -> int:
        return store.clear(self.prefix)

    def arun(self, store: AsyncStore) -> Awaitable[int]:
        return store.clear(self.prefix)


class Broadcast(StoreStep):
    """``store.publish(channel, message)`` (a :class:`~cachelayer.backends.Publisher`)."""

    __slots__ = ("channel", "message")
    name = "publish"

    def __init__(self, channel: str, message: bytes) -> None:
        self.channel, self.message = channel, message

    def run(self, store: Store) -> int:
        return cast("Publisher", store).publish(self.channel, self.message)

    def arun(self, store: AsyncStore) -> Awaitable[int]:
        return cast("AsyncPublisher", store).publish(self.channel, self.message)


class Load(Step):
    """Call the loader: its value is sent back, or its exception thrown into the flow."""

    __slots__ = ()


#: The one :class:`Load` step.
LOAD = Load()


class Sleep(Step):
    """Wait ``seconds`` (``time.sleep`` or ``asyncio.sleep``)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class JoinFlight(Step):
    """Join the in-process load of ``key``: :data:`LEAD` when this caller leads, else
    the leader's finished flight (``_flight.Flight``), trusted or not."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class Publish(Step):
    """Hand the outcome (envelope bytes) to the followers of this caller's flight."""

    __slots__ = ("raw", "trusted")

    def __init__(self, raw: bytes, trusted: bool) -> None:
        self.raw, self.trusted = raw, trusted


class KeepLocal(Step):
    """Offer a fresh entry just read from the store to the local tier, if there is one
    (the shell passes the tier's sequence number taken before the flow's first read)."""

    __slots__ = ("entry", "key", "now_ms")

    def __init__(self, key: str, entry: Entry, now_ms: int) -> None:
        self.key, self.entry, self.now_ms = key, entry, now_ms


class Refresh(Step):
    """Run ``flow`` in the background (at most one per ``key`` in the process)."""

    __slots__ = ("flow", "key")

    def __init__(self, key: str, flow: Flow) -> None:
        self.key, self.flow = key, flow


#: A flow: yields steps, is sent their results, returns its answer.
Flow = Generator[Step, Any, Any]


def delays(total: float, first: float = 0.002, most: float = 0.05) -> Iterator[float]:
    """Exponential back-off sleeps that add up to at least ``total`` seconds."""
    waited, delay = 0.0, first
    while waited < total:
        yield delay
        waited += delay
        delay = min(delay * 2, most)
