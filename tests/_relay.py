"""A TCP relay on loopback that adds latency to a server's replies: a slow network, for
the fault tests and bench/bench_faults.py.

Usage::

    with DelayingRelay(server.port) as relay:
        cache = Cache(relay.url)
        relay.delay = 0.4  # every reply from now on arrives 400 ms late
        ...
        relay.delay = 0.0

Each connection accepted on ``127.0.0.1`` gets its own connection to the upstream server;
bytes from the client are forwarded at once, and each chunk of the server's reply is held
until ``delay`` seconds after it arrived (the delay in force when it arrived), so the
added latency does not cap throughput. Chunks keep their order.

Bounded: loopback only, at most ``max_connections`` connections at a time (more are
closed at once), at most ``max_chunks`` chunks held per connection (a full queue stops
reading from the server: back-pressure, not memory). It runs its own event loop in one
daemon thread; :meth:`stop` (or leaving the ``with`` block) closes every connection and
the listener, and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from types import TracebackType

__all__ = ["DelayingRelay"]

_CHUNK = 64 * 1024


class DelayingRelay:
    """A loopback relay to ``upstream_host:upstream_port`` that delays replies.

    Args:
        upstream_port: the server's port.
        upstream_host: the server's address; must be a loopback address.
        delay: seconds each reply chunk is held (change it any time with ``.delay``).
        max_connections: connections relayed at once; more are closed on accept.
        max_chunks: reply chunks held per connection before reading pauses.
    """

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        delay: float = 0.0,
        max_connections: int = 1024,
        max_chunks: int = 256,
    ) -> None:
        if not ipaddress.ip_address(upstream_host).is_loopback:
            raise ValueError(f"the relay only forwards to loopback, not {upstream_host!r}")
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.max_connections = max_connections
        self.max_chunks = max_chunks
        self.host = "127.0.0.1"
        self.port = 0
        #: connections accepted, and refused over ``max_connections``
        self.accepted = 0
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """A ``redis://`` URL through the relay (database 0)."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> DelayingRelay:
        """Listen on a free loopback port (``.port``) and relay from a daemon thread."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="relay", daemon=True)
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, self.host, 0), loop
        ).result(timeout=10)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection, stop the loop, join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> DelayingRelay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.max_connections:
            self.refused += 1
            writer.close()
            return
        self.accepted += 1
        self._tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(self.max_chunks)
            pumps = [
                asyncio.ensure_future(_forward(reader, up_writer)),
                asyncio.ensure_future(self._hold(up_reader, queue)),
                asyncio.ensure_future(_deliver(queue, writer)),
            ]
            try:
                # Either side closing (or failing) ends the connection.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass  # the upstream is down (a stopped server): the client sees a close
        except asyncio.CancelledError:
            pass  # stop(): asyncio's server callback must not see a cancelled handler
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def _hold(
        self, up_reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        """Read the server's replies, stamping each chunk with when it may be delivered."""
        loop = asyncio.get_running_loop()
        while True:
            data = await up_reader.read(_CHUNK)
            await queue.put((loop.time() + self.delay, data) if data else None)
            if not data:
                return


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()


async def _deliver(
    queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
) -> None:
    loop = asyncio.get_running_loop()
    while (item := await queue.get()) is not None:
        due, data = item
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        writer.write(data)
        await writer.drain()
