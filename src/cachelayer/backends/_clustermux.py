"""The Redis Cluster store's asyncio face: one multiplexed connection per node and loop.

redis-py's asyncio cluster client keeps a pool per node and a connection per concurrent
command, which is what collapses the single-server face under many coroutines (see
docs/failure.md and the load tests). This face routes each command to the primary that
serves its key's slot and sends it on that node's
:class:`~cachelayer.backends._multiplex.Multiplexer`, so every coroutine's commands to a
node share one socket and leave in one write.

- **Slot map.** Read with ``CLUSTER SLOTS`` from the seed nodes (then any node known) on
  first use, and again after a node fails (at most every ``REFRESH_INTERVAL`` seconds;
  one refresh at a time, the others wait for it).
- **Redirections.** ``MOVED`` updates the slot it names and sends the command there;
  ``ASK`` sends ``ASKING`` and the command to the importing node (the map is unchanged).
  ``TRYAGAIN`` (a multi-key command in a slot half migrated) is sent again after
  ``TRY_AGAIN_DELAY``, up to ``TRY_AGAIN_TRIES`` times (0.4 s, as redis-py's 16 attempts);
  at most ``MAX_REDIRECTS`` redirections per command. Past either, it fails like any
  store failure.
- **Many keys.** ``MGET`` and ``DEL`` are split by slot, every slot's command issued at
  once (so each node gets its slots' commands in one write); ``set_many`` issues every
  write at once. ``scan`` walks every primary.

Every command still runs on one node, as cachelayer keeps what one step touches in one
slot (a key and its lease share a hash tag; docs/keys.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.exceptions as rx
from redis.crc import key_slot

from ..errors import ConfigurationError
from ._multiplex import Arg, Multiplexer
from .base import Item
from .redis import (
    _DELETE_IF,
    _FILL,
    _LEASE,
    _SET_VOID,
    _SWAP,
    SCAN_COUNT,
    _key_str,
    _lease_result,
    _ms,
    _set_args,
    _swap_args,
)

__all__ = ["ClusterClient", "MultiplexedClusterStore"]

SLOTS = 16384
MAX_REDIRECTS = 5
#: seconds between two reads of the slot map after failures
REFRESH_INTERVAL = 0.1
#: seconds before a command that got TRYAGAIN is sent again, and how many times
TRY_AGAIN_DELAY = 0.02
TRY_AGAIN_TRIES = 20

T = TypeVar("T")
Address = tuple[str, int]


class ClusterClient:
    """Routes commands to the node of their key's slot, over one Multiplexer per node.

    Use it from one event loop; ``close()`` it there.

    Args:
        seeds: a few nodes of the cluster (it learns the others from the slot map).
        settings: keyword arguments of :class:`Multiplexer` for every node.
    """

    def __init__(self, seeds: Sequence[Address], settings: dict[str, Any]) -> None:
        if not seeds:
            raise ValueError("a cluster client needs at least one seed node")
        self.seeds = list(seeds)
        self.settings = settings
        self.nodes: dict[Address, Multiplexer] = {}
        self.slots: list[Address | None] = [None] * SLOTS
        self._stale = True
        self._refreshed = 0.0
        self._refresh: asyncio.Task[None] | None = None
        #: the node that last gave the slot map: asked first next time (a stalled seed
        #: would otherwise hold every refresh for its timeout)
        self._answered: Address | None = None
        self._closed = False

    # -- the slot map ----------------------------------------------------------------------

    def node(self, address: Address) -> Multiplexer:
        client = self.nodes.get(address)
        if client is None:
            if self._closed:
                raise rx.ConnectionError("the cluster client is closed")
            client = self.nodes[address] = Multiplexer(address[0], address[1], **self.settings)
        return client

    async def _read_map(self) -> None:
        problems: list[str] = []
        first = [self._answered] if self._answered is not None else []
        candidates = list(dict.fromkeys([*first, *self.seeds, *self.nodes]))
        for address in candidates:
            try:
                ranges = await self.node(address).execute("CLUSTER", "SLOTS")
            except rx.RedisError as exc:
                problems.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            slots: list[Address | None] = [None] * SLOTS
            for start, end, primary, *_replicas in ranges:
                host = primary[0].decode() or address[0]  # an empty host: the one we asked
                owner = (host, int(primary[1]))
                slots[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
            self.slots = slots
            self._stale = False
            self._answered = address
            return
        raise rx.ConnectionError(f"no cluster node gave the slot map: {'; '.join(problems)}")

    async def refresh(self) -> None:
        """Read the slot map again (one read at a time; callers share it)."""
        task = self._refresh
        if task is None or task.done():
            task = self._refresh = asyncio.get_running_loop().create_task(self._read_map())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._refreshed = time.monotonic()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # close() stopped the refresh, not this caller's task
                raise rx.ConnectionError("the cluster client was closed") from None
            raise

    async def owner(self, slot: int) -> Address:
        """The primary serving ``slot`` (the map read first when it may be out of date)."""
        if self._stale and time.monotonic() - self._refreshed >= REFRESH_INTERVAL:
            await self.refresh()
        address = self.slots[slot]
        if address is None:
            if self._refresh is None or self._stale:
                await self.refresh()
                address = self.slots[slot]
            if address is None:
                raise rx.ClusterDownError(f"no node serves slot {slot}")
        return address

    # -- routing ---------------------------------------------------------------------------

    async def routed(self, key: Arg, send: Callable[[Multiplexer, bool], Awaitable[T]]) -> T:
        """Run ``send(node, asking)`` on the node of ``key``'s slot, following redirections
        (``asking``: send ``ASKING`` first, for an ``ASK``)."""
        slot = key_slot(key.encode() if isinstance(key, str) else bytes(key))  # type: ignore[arg-type]
        address = await self.owner(slot)
        asking = False
        redirects = waits = 0
        while redirects < MAX_REDIRECTS:
            try:
                return await send(self.node(address), asking)
            except rx.MovedError as exc:  # (before AskError: MovedError is one)
                address = (exc.host, exc.port)
                self.slots[exc.slot_id] = address
                asking = False
                redirects += 1
            except rx.AskError as exc:
                address, asking = (exc.host, exc.port), True
                redirects += 1
            except rx.TryAgainError:
                # A multi-key command (a key and its lease) in a slot being migrated, some
                # of its keys moved already: the keys are moved within moments.
                waits += 1
                if waits > TRY_AGAIN_TRIES:
                    raise
                await asyncio.sleep(TRY_AGAIN_DELAY)
            except (rx.ConnectionError, rx.TimeoutError, rx.ClusterDownError):
                self._stale = True  # a node failed or moved: read the map again soon
                raise
        raise rx.ClusterError(f"more than {MAX_REDIRECTS} redirections for slot {slot}")

    async def execute(self, key: Arg, *command: Arg) -> Any:
        """Send ``command``, whose keys are all in ``key``'s slot."""

        async def send(node: Multiplexer, asking: bool) -> Any:
            if asking:
                return (await node.execute_many((("ASKING",), command)))[1]
            return await node.execute(*command)

        return await self.routed(key, send)

    async def evalsha(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run a Lua script on the node of its keys' slot (loaded there when missing)."""

        async def send(node: Multiplexer, asking: bool) -> Any:
            if asking:  # ASKING is for the next command only: EVAL carries the script
                command = ("EVAL", script, len(keys), *keys, *args)
                return (await node.execute_many((("ASKING",), command)))[1]
            return await node.evalsha(script, keys, args)

        return await self.routed(keys[0], send)

    def by_slot(self, keys: Sequence[str]) -> dict[int, list[int]]:
        """``{slot: [indexes of its keys]}``."""
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key_slot(key.encode()), []).append(index)
        return groups

    async def primaries(self) -> list[Address]:
        if self._stale or self._refresh is None:
            await self.refresh()
        return list(dict.fromkeys(a for a in self.slots if a is not None))

    async def close(self) -> None:
        self._closed = True  # no node is opened from now on (a refresh under way...)
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
        nodes, self.nodes = list(self.nodes.values()), {}
        for client in nodes:
            await client.close()

    def discard(self) -> None:
        self._closed = True
        for client in self.nodes.values():
            client.discard()
        self.nodes = {}


class MultiplexedClusterStore:
    """The asyncio face of the Cluster store over :class:`ClusterClient` (one per event
    loop, via ``clients``: a :class:`~cachelayer.backends._perloop.PerLoop`)."""

    def __init__(self, clients: Any) -> None:
        self.clients = clients
        self.failures: tuple[type[BaseException], ...] = (rx.RedisError,)

    def _here(self) -> ClusterClient:
        client: ClusterClient = self.clients.get()
        return client

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._here().execute(key, "GET", key)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        here = self._here()
        groups = list(here.by_slot(keys).values())
        replies = await asyncio.gather(
            *(here.execute(keys[g[0]], "MGET", *(keys[i] for i in g)) for g in groups)
        )
        values: list[bytes | None] = [None] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            for index, value in zip(group, reply, strict=True):
                values[index] = value
        return values

    async def set(
        self, key: str, value: bytes, ttl: float | None, void: str | None = None
    ) -> None:
        here = self._here()
        if void is None:
            await here.execute(key, *_set_args(key, value, ttl))
        else:
            await here.evalsha(_SET_VOID, [key, void], [value, _ms(ttl)])

    async def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        # Issued together: each node gets its keys' writes in one batch.
        await asyncio.gather(
            *(self.set(key, value, ttl, void[i] if i < len(void) else None)
              for i, (key, value, ttl) in enumerate(items))
        )  # fmt: skip

    async def _per_slot(self, command: str, keys: Sequence[str]) -> int:
        """``command`` (DEL, UNLINK) once per slot, all issued at once; the sum."""
        here = self._here()
        groups = here.by_slot(keys).values()
        counts = await asyncio.gather(
            *(here.execute(keys[g[0]], command, *(keys[i] for i in g)) for g in groups)
        )
        return sum(int(n) for n in counts)

    async def delete(self, keys: Sequence[str]) -> int:
        # One DEL per slot: each slot's keys (a key and its lease) go atomically.
        return await self._per_slot("DEL", keys) if keys else 0

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        return bool(await self._here().execute(key, *_set_args(key, value, ttl), "NX"))

    async def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        reply = await self._here().evalsha(_LEASE, [key, lease], [token, _ms(ttl)])
        return _lease_result(reply)

    async def fill(
        self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes
    ) -> bool:
        here = self._here()
        return bool(await here.evalsha(_FILL, [key, lease], [token, value, _ms(ttl)]))

    async def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        args = _swap_args(key, expected, value, ttl, void, keep_ttl)
        return bool(await self._here().evalsha(_SWAP, args["keys"], args["args"]))

    async def delete_if(self, key: str, token: bytes) -> bool:
        return bool(await self._here().evalsha(_DELETE_IF, [key], [token]))

    async def scan(self, pattern: str) -> AsyncIterator[str]:
        here = self._here()
        for address in await here.primaries():
            node, cursor = here.node(address), b"0"
            while True:
                cursor, keys = await node.execute(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT
                )
                for key in keys:
                    yield _key_str(key)
                if cursor in (b"0", 0):
                    break

    async def clear(self, prefix: str) -> int:
        count = 0
        for pattern in (prefix + "*", "{" + prefix + "*"):
            batch: list[str] = []
            async for key in self.scan(pattern):
                batch.append(key)
                if len(batch) >= 1000:
                    count += await self._per_slot("UNLINK", batch)
                    batch = []
            if batch:
                count += await self._per_slot("UNLINK", batch)
        return count

    async def publish(self, channel: str, message: bytes) -> int:
        # A cluster forwards PUBLISH to every node: any node will do; the channel's own.
        return int(await self._here().execute(channel, "PUBLISH", channel, message))

    async def close(self) -> None:
        await self.clients.close()


#: redis-py cluster options that have no meaning for this face (it routes by itself).
_CLUSTER_ONLY = frozenset(
    {"reinitialize_steps", "require_full_coverage", "read_from_replicas", "protocol"}
)


def multiplexed_cluster(
    seeds: Sequence[Address], settings: dict[str, Any]
) -> MultiplexedClusterStore | None:
    """The multiplexed asyncio face for a cluster URL's seeds and settings, or None when
    the settings hold an option only redis-py's cluster client understands."""
    from ._perloop import PerLoop
    from .redis import _multiplexer_options

    try:
        node_settings = _multiplexer_options(
            {k: v for k, v in settings.items() if k not in _CLUSTER_ONLY and v is not None}
        )
    except ConfigurationError:
        return None
    clients: PerLoop[ClusterClient] = PerLoop(
        lambda: ClusterClient(seeds, node_settings),
        aclose=lambda client: client.close(),
        discard=lambda client: client.discard(),
    )
    return MultiplexedClusterStore(clients)
