"""Automatic pipelining over a few asyncio connections to Redis (as ioredis does for Node).

redis-py's asyncio client gives every in-flight call a pooled connection of its own: 100
coroutines mean 100 sockets, 100 writes and 100 reads per round, and a socket timeout that
also counts the time a ready reply waits for the busy event loop. Here every coroutine's
command goes onto one shared connection instead: commands issued during one loop
iteration are packed into ONE ``transport.write`` (scheduled with ``call_soon``; a command
on an idle connection is written at once, so a lone caller waits for nothing), and replies,
parsed by hiredis in ``data_received``, resolve one future per command in order.

Timeouts measure the server, not the loop: a command fails only if its reply has not
*arrived* within ``timeout`` of being written. asyncio runs an iteration's I/O callbacks
before its due timers, so a reply that came in while the loop was blocked is parsed before
the deadline timer looks at it (and while bytes keep coming in, a reply still streaming
counts as arriving). After a timeout the connection is closed (later replies would match
the wrong callers) and all its commands fail with ``TimeoutError``; a lost connection
fails them all with ``ConnectionError`` at once. Either way the next call reconnects.

A caller cancelled after its command was queued does not unsend it: the command may still
run, and its reply is read and dropped, so the replies behind it stay aligned. Past
``max_pending`` waiting commands a call fails at once (:class:`PendingLimitExceeded`)
instead of queueing: a cache that waits costs more than the lookup it would save.

Not for blocking commands (``BLPOP``), ``SUBSCRIBE``, ``WATCH``, ``SELECT`` or ``CLIENT
REPLY``: they change the one connection every caller shares. ``MULTI``/``EXEC`` is fine
inside one :meth:`Multiplexer.execute_many`, whose commands are always sent back to back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket as socket_module
import ssl as ssl_module
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, cast

import hiredis
from redis import exceptions as rx
from redis.connection import parse_url

from .._redact import redact_url
from ..errors import ConfigurationError, StoreBusy

__all__ = ["Arg", "Multiplexer", "PendingLimitExceeded", "pack_command_py", "ssl_context"]

#: A command argument: str is sent UTF-8 encoded, numbers as their decimal text.
Arg: TypeAlias = str | bytes | int | float | memoryview


def pack_command_py(args: tuple[Arg, ...]) -> bytes:
    """Encode a command as RESP, as ``hiredis.pack_command`` does (hiredis < 2.2 lacks it).

    Raises:
        TypeError: an argument is not str, bytes, int, float or memoryview.
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode()
        elif isinstance(arg, memoryview):
            data = arg.tobytes()
        else:
            raise TypeError(f"a command argument cannot be {type(arg).__name__}: {arg!r}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# hiredis's stub types the argument as a 1-tuple; it packs a command of any length.
_pack = cast(Callable[[tuple[Arg, ...]], bytes], getattr(hiredis, "pack_command", pack_command_py))
_NOT_ENOUGH_DATA = object()  # hiredis returns it when no complete reply is buffered
_ERROR_CLASSES: dict[str, type[Exception]] = {
    "NOSCRIPT": rx.NoScriptError,
    "NOPERM": rx.NoPermissionError,
    "READONLY": rx.ReadOnlyError,
    "WRONGPASS": rx.AuthenticationError,
    "NOAUTH": rx.AuthenticationError,
    "LOADING": rx.BusyLoadingError,
    "EXECABORT": rx.ExecAbortError,
    "TRYAGAIN": rx.TryAgainError,
    "CLUSTERDOWN": rx.ClusterDownError,
}
_CERT_REQS = {
    "none": ssl_module.CERT_NONE,
    "optional": ssl_module.CERT_OPTIONAL,
    "required": ssl_module.CERT_REQUIRED,
}


class PendingLimitExceeded(rx.ConnectionError, StoreBusy):
    """``max_pending`` commands already wait on the connection; this one was not sent.

    Redis or the network is not keeping up. The call fails at once rather than queueing
    without bound: a cache that waits costs more than the lookup it would save.
    """


# URL options that shape redis-py's connection pools and retries, not a connection.
# (``timeout`` in a URL is redis-py's BlockingConnectionPool wait, not a reply timeout.)
# (TCP keepalive is not set: a reply that does not arrive in time fails the connection.)
_POOL_ONLY = (
    "max_connections",
    "health_check_interval",
    "retry_on_timeout",
    "timeout",
    "socket_keepalive",
)


def _reply_error(message: str) -> Exception:
    """Build the redis-py exception for an error reply (hiredis calls it per error)."""
    code, _, rest = message.partition(" ")
    if code in ("MOVED", "ASK"):  # a cluster's redirection: "<slot> <host>:<port>"
        with contextlib.suppress(ValueError):
            return (rx.MovedError if code == "MOVED" else rx.AskError)(rest)
    return _ERROR_CLASSES.get(code, rx.ResponseError)(message)


class _Connection(asyncio.Protocol):
    """One socket: the queue of unsent commands and the futures waiting for replies."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, address: str, timeout: float | None, limit: int
    ) -> None:
        self.loop = loop
        self.address = address
        self.timeout = timeout
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=_reply_error, notEnoughData=_NOT_ENOUGH_DATA)
        self.waiting: deque[asyncio.Future[Any]] = deque()  # written, reply not yet read
        self.unsent: list[bytes] = []
        self.unsent_futures: list[asyncio.Future[Any]] = []
        self.flush_scheduled = False
        self.failed = False
        self.lost: asyncio.Future[None] = loop.create_future()
        # Deadlines are kept per written batch: (commands written up to it, deadline).
        self.written = 0
        self.answered = 0
        self.deadlines: deque[tuple[int, float]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.received = False  # bytes came in since the deadline check last ran
        self.expired: float | None = None  # a passed deadline awaiting its last look

    @property
    def pending(self) -> int:
        return len(self.waiting) + len(self.unsent)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else " (closed by the server)"
        self.fail(rx.ConnectionError, f"connection to Redis at {self.address} lost{reason}")
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        self.received = True
        waiting = self.waiting
        answered = self.answered
        try:
            reply = reader.gets()
            while reply is not _NOT_ENOUGH_DATA:
                future = waiting.popleft()
                answered += 1
                if not future.done():  # a cancelled caller's reply is read and dropped
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                reply = reader.gets()
        except (hiredis.ProtocolError, IndexError) as exc:
            # Garbage, or a reply nobody asked for: no later reply can be trusted.
            self.abort(rx.ConnectionError, f"Redis at {self.address} broke the protocol: {exc}")
        self.answered = answered
        # Forget answered batches now, so the deadline queue holds only unanswered ones.
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= answered:
            deadlines.popleft()

    def send_one(self, command: bytes) -> asyncio.Future[Any]:
        """:meth:`send` for one command, without the lists (the hot path)."""
        waiting = self.waiting
        unsent = self.unsent
        if self.failed or len(waiting) + len(unsent) >= self.limit:
            return self.send([command])[0]  # raises the right error
        future = self.loop.create_future()
        if waiting or unsent:
            unsent.append(command)
            self.unsent_futures.append(future)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.call_soon(self.flush)
        else:
            self._write(command, [future])
        return future

    def send(self, commands: list[bytes]) -> list[asyncio.Future[Any]]:
        """Queue packed commands back to back; return one future per command."""
        if self.failed:
            raise rx.ConnectionError(f"connection to Redis at {self.address} is closed")
        if len(self.waiting) + len(self.unsent) + len(commands) > self.limit:
            raise PendingLimitExceeded(
                f"{self.pending} commands already wait for Redis at {self.address} "
                f"(max_pending={self.limit}): the server or network is not keeping up; "
                "the command was not sent"
            )
        create = self.loop.create_future
        futures = [create() for _ in commands]
        if self.waiting or self.unsent:
            # Busy: gather everything issued during this iteration into one write.
            self.unsent.extend(commands)
            self.unsent_futures.extend(futures)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.call_soon(self.flush)
        else:
            self._write(commands[0] if len(commands) == 1 else b"".join(commands), futures)
        return futures

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.failed or not self.unsent:
            return
        data, futures = b"".join(self.unsent), self.unsent_futures
        self.unsent, self.unsent_futures = [], []
        self._write(data, futures)

    def _write(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self.waiting.extend(futures)
        self.written += len(futures)
        if self.timeout is not None:
            deadline = self.loop.time() + self.timeout
            self.deadlines.append((self.written, deadline))
            if self.timer is None:
                self.timer = self.loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        # A timer callback: replies that arrived in this iteration were parsed before it.
        self.timer = None
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= self.answered:
            deadlines.popleft()
        if self.failed or not deadlines:
            return
        deadline = deadlines[0][1]
        now = self.loop.time()
        if deadline <= now and (self.received or self.expired != deadline):
            # Look once more after another poll for I/O before calling it a timeout:
            # asyncio reads at most 256 KiB per iteration, so the reply may sit behind the
            # bytes just read, and loops built on libuv (uvloop) run due timers *before*
            # polling (and may run a 0 ms timer without polling: hence 1 ms). While bytes
            # keep coming in, the server is alive.
            self.received = False
            self.expired = deadline
            self.timer = self.loop.call_at(now + 0.001, self._check_deadline)
        elif deadline <= now:
            self.abort(
                rx.TimeoutError,
                f"Redis at {self.address} sent no reply within {self.timeout} s",
            )
        else:
            self.timer = self.loop.call_at(deadline, self._check_deadline)

    def fail(self, error: type[Exception], message: str) -> None:
        """Fail every queued and in-flight command (each gets its own exception)."""
        if self.failed:
            return
        self.failed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        futures = [*self.waiting, *self.unsent_futures]
        self.waiting.clear()
        self.unsent, self.unsent_futures = [], []
        for future in futures:
            if not future.done():
                future.set_exception(error(message))

    def abort(self, error: type[Exception], message: str) -> None:
        """Fail everything and drop the socket at once (its pending replies are void)."""
        self.fail(error, message)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.fail(rx.ConnectionError, f"connection to Redis at {self.address} closed")
        # abort, not close: nothing buffered is wanted any more (every command has just
        # failed), and close would wait for a stalled server to drain the buffer. A closed
        # loop can no longer close its transports: the garbage collector does.
        if self.transport is not None and not self.loop.is_closed():
            self.transport.abort()


class Multiplexer:
    """An asyncio Redis client that pipelines every caller's commands on shared connections.

    Connections open lazily on first use; callers that arrive while one is opening wait
    for that one attempt. A failed or timed-out connection is dropped and the next call
    opens a new one. Use it from one event loop at a time and ``close()`` it in that loop;
    used from another loop later, it drops the old loop's connections and opens new ones.

    Args:
        host: server host name or address.
        port: server TCP port.
        path: a unix socket path; when given, ``host`` and ``port`` are ignored.
        ssl: an ``ssl.SSLContext`` for TLS, or None for plain TCP.
        server_hostname: the name to check the TLS certificate against (default: host).
        username: ACL user name (with ``password``); None for the default user.
        password: password sent with ``AUTH`` when connecting; None to skip ``AUTH``.
        db: the database selected when connecting.
        connect_timeout: seconds to open a connection and authenticate; None: no limit.
        timeout: seconds a command's reply may take to arrive after it was written; None:
            no limit.
        connections: how many connections to spread commands over (1 or 2).
        max_pending: commands that may wait on one connection (queued or unanswered);
            past it a call raises :class:`PendingLimitExceeded` at once.
        client_name: a name set with ``CLIENT SETNAME`` on each connection (shown by
            ``CLIENT LIST``); None sets none.
        resolve: asks where the server is before each connection (a Sentinel primary's
            address); ``host`` and ``port`` are then only the first guess. A connection
            that gets a ``READONLY`` reply (a primary demoted to replica) is dropped, so
            the next command connects to wherever ``resolve`` says.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        path: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        connect_timeout: float | None = 1.0,
        timeout: float | None = 1.0,
        connections: int = 1,
        max_pending: int = 10_000,
        client_name: str | None = None,
        resolve: Callable[[], Awaitable[tuple[str, int]]] | None = None,
    ) -> None:
        if connections not in (1, 2):
            raise ConfigurationError(f"connections must be 1 or 2, not {connections!r}")
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be at least 1, not {max_pending!r}")
        self.host, self.port, self.path = host, port, path
        self.ssl, self.server_hostname = ssl, server_hostname
        self.username, self.password, self.db = username, password, db
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.max_pending = max_pending
        self.client_name = client_name
        self.resolve = resolve
        self.address = f"unix:{path}" if path else f"{host}:{port}"
        self._slots: list[_Connection | None] = [None] * connections
        self._opening: list[asyncio.Task[_Connection] | None] = [None] * connections
        self._turn = 0
        self._generation = 0
        self._shas: dict[str | bytes, str] = {}
        self._pid = os.getpid()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Multiplexer:
        """Build a client from ``redis://[[user]:password@]host[:port][/db]``.

        ``rediss://`` turns on TLS (query options ``ssl_cert_reqs``, ``ssl_ca_certs``,
        ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``) and
        ``unix:///path.sock?db=N`` uses a unix socket. Query ``socket_timeout`` and
        ``socket_connect_timeout`` set ``timeout`` and ``connect_timeout``.

        Args:
            url: the Redis URL.
            **options: keyword arguments of :class:`Multiplexer`; they override the URL.

        Raises:
            ConfigurationError: the URL has an option this client does not support.
        """
        parsed: dict[str, Any] = dict(parse_url(url))  # type: ignore[no-untyped-call]
        for name in _POOL_ONLY:  # options of redis-py's pools, meaningless here
            parsed.pop(name, None)
        kind = parsed.pop("connection_class", None)
        tls = {k[4:]: parsed.pop(k) for k in list(parsed) if k.startswith("ssl_")}
        if "socket_timeout" in parsed:
            parsed["timeout"] = parsed.pop("socket_timeout")
        if "socket_connect_timeout" in parsed:
            parsed["connect_timeout"] = parsed.pop("socket_connect_timeout")
        known = {"host", "port", "path", "username", "password", "db", "timeout", "client_name"}
        unknown = set(parsed) - known - {"connect_timeout"}
        if unknown:
            raise ConfigurationError(
                f"{redact_url(url)!r}: unknown or unsupported option(s) {sorted(unknown)} "
                "(a Redis URL may carry socket_timeout, socket_connect_timeout, client_name, "
                "db, ssl_* and redis-py's pool options)"
            )
        if kind is not None and kind.__name__ == "SSLConnection":
            parsed["ssl"] = ssl_context(**tls)
        return cls(**{**parsed, **options})

    @property
    def pending(self) -> int:
        """Commands queued or waiting for a reply, over all connections."""
        return sum(conn.pending for conn in self._slots if conn is not None)

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply as redis-py would, undecoded.

        Returns:
            bytes, int, None, or a (nested) list of them; ``OK`` is ``b"OK"``.

        Raises:
            redis.exceptions.ResponseError: the server answered with an error (a
                ``NoScriptError``, ``NoPermissionError``, ... where redis-py has one).
            redis.exceptions.ConnectionError: no connection, or it was lost before the
                reply came (:class:`PendingLimitExceeded` when too many commands wait).
            redis.exceptions.TimeoutError: no reply arrived within ``timeout``.
            TypeError: an argument is not str, bytes, int, float or memoryview.
        """
        conn = self._ready() or await self._connect()
        try:
            return await conn.send_one(_pack(args))
        except rx.ReadOnlyError:
            if self.resolve is not None:
                conn.close()  # a replica now: the next command finds the primary again
            raise

    async def execute_many(
        self, commands: Iterable[Sequence[Arg]], *, raise_on_error: bool = True
    ) -> list[Any]:
        """Send several commands back to back on one connection; replies in order.

        Args:
            commands: the commands, each a sequence of arguments.
            raise_on_error: raise the first command's error once every reply is in (as
                redis-py's pipeline does); when False, errors are returned in the list
                as exception objects in their command's place.

        Returns:
            one reply per command.

        Raises:
            The errors of :meth:`execute`.
        """
        packed = [_pack(tuple(command)) for command in commands]
        if not packed:
            return []
        conn = self._ready() or await self._connect()
        futures = conn.send(packed)
        try:
            # Replies and failures resolve futures in order: the last done means all are.
            await asyncio.wait((futures[-1],))
        except asyncio.CancelledError:
            _discard(futures)
            raise
        replies = [f.exception() or f.result() for f in futures]
        if self.resolve is not None and any(isinstance(r, rx.ReadOnlyError) for r in replies):
            conn.close()
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    async def evalsha(
        self, script: str | bytes, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        """Run a Lua script by its SHA1, loading it when the server does not have it.

        On ``NOSCRIPT`` (a restarted server, ``SCRIPT FLUSH``) ``SCRIPT LOAD`` and the
        ``EVALSHA`` are sent again together: one more round trip, no ``EVAL`` permission
        needed.

        Args:
            script: the script's source.
            keys: its ``KEYS``.
            args: its ``ARGV``.

        Raises:
            The errors of :meth:`execute`.
        """
        sha = self._shas.get(script)
        if sha is None:
            source = script.encode() if isinstance(script, str) else script
            sha = self._shas[script] = hashlib.sha1(source, usedforsecurity=False).hexdigest()
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except rx.NoScriptError:
            replies = await self.execute_many((("SCRIPT", "LOAD", script), command))
            return replies[1]

    async def close(self) -> None:
        """Fail what is still pending, close every connection and wait until they are."""
        running = asyncio.get_running_loop()
        # A connect under way is not cancelled (its waiters would see CancelledError):
        # it finds the generation changed when done, and closes what it opened.
        self._generation += 1
        self._opening = [None] * len(self._opening)
        conns = [conn for conn in self._slots if conn is not None]
        self._slots = [None] * len(self._slots)
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.lost for c in conns if c.loop is running))

    def discard(self) -> None:
        """Release the connections when their event loop is gone (closed or collected):
        shut each socket down so the server drops it now. Nothing is awaited; the
        transports themselves are closed when the garbage collector takes them."""
        conns = [conn for conn in self._slots if conn is not None]
        self._slots = [None] * len(self._slots)
        self._opening = [None] * len(self._opening)
        if os.getpid() != self._pid:
            return  # a forked child: the sockets are the parent's, which still uses them
        for conn in conns:
            sock = conn.transport.get_extra_info("socket") if conn.transport else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket_module.SHUT_RDWR)

    async def __aenter__(self) -> Multiplexer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _ready(self) -> _Connection | None:
        """The connection for the next command, if it is open in the running loop."""
        slots = self._slots
        if len(slots) == 1:
            conn = slots[0]
        else:
            self._turn ^= 1
            conn = slots[self._turn]
        if conn is None or conn.failed or conn.loop is not asyncio.get_running_loop():
            return None
        return conn

    async def _connect(self) -> _Connection:
        """Open the current slot's connection, sharing one attempt among all callers."""
        index = self._turn if len(self._slots) > 1 else 0
        loop = asyncio.get_running_loop()
        old = self._slots[index]
        if old is not None and old.loop is not loop:
            self._slots[index] = None  # another loop's socket: unusable here
            old.close()
        task = self._opening[index]
        if task is None or task.get_loop() is not loop:
            task = self._opening[index] = loop.create_task(self._open(index))
            # Retrieve a failure even when every waiter was cancelled (no log noise).
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        # One waiter's cancellation must not cancel the attempt the others wait for.
        return await asyncio.shield(task)

    async def _open(self, index: int) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self.address, self.timeout, self.max_pending)
        generation = self._generation
        try:
            await asyncio.wait_for(self._handshake(conn), self.connect_timeout)
            if generation != self._generation:
                raise rx.ConnectionError(f"client for Redis at {self.address} closed")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, asyncio.TimeoutError):
                raise rx.TimeoutError(
                    f"timeout connecting to Redis at {self.address} "
                    f"(connect_timeout={self.connect_timeout} s)"
                ) from None
            if isinstance(exc, OSError):
                raise rx.ConnectionError(
                    f"error connecting to Redis at {self.address}: {exc}"
                ) from exc
            raise
        finally:
            if self._opening[index] is asyncio.current_task():
                self._opening[index] = None
        self._slots[index] = conn
        return conn

    async def _handshake(self, conn: _Connection) -> None:
        loop = conn.loop
        if self.path is not None:
            await loop.create_unix_connection(lambda: conn, self.path, ssl=self.ssl)
        else:
            host, port = self.host, self.port
            if self.resolve is not None:
                host, port = await self.resolve()
                conn.address = self.address = f"{host}:{port}"
            hostname = (self.server_hostname or host) if self.ssl else None
            await loop.create_connection(
                lambda: conn, host, port, ssl=self.ssl, server_hostname=hostname
            )
        if self.password is not None:
            auth: tuple[Arg, ...] = ("AUTH", self.password)
            if self.username:
                auth = ("AUTH", self.username, self.password)
            try:
                await conn.send([_pack(auth)])[0]
            # WRONGPASS, or a ResponseError such as "AUTH called without any password".
            except (rx.AuthenticationError, rx.ResponseError) as exc:
                user = self.username or "default"
                raise rx.AuthenticationError(
                    f"Redis at {self.address} refused user {user!r}: {exc} "
                    "(check the user name and password in the URL)"
                ) from exc
        if self.db:
            await conn.send([_pack(("SELECT", self.db))])[0]
        if self.client_name:
            await conn.send([_pack(("CLIENT", "SETNAME", self.client_name))])[0]


def _discard(futures: list[asyncio.Future[Any]]) -> None:
    """Give up on futures: cancel the pending, and mark failures seen (no log noise)."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


def ssl_context(
    cert_reqs: str | int = "required",
    ca_certs: str | None = None,
    ca_path: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    check_hostname: bool | None = None,
    password: str | None = None,
    **unsupported: Any,
) -> ssl_module.SSLContext:
    """An SSLContext from redis-py's ``ssl_*`` URL options (``password`` opens an
    encrypted ``keyfile``).

    Raises:
        ConfigurationError: an unsupported option, an unknown ``cert_reqs``, or a
            certificate or key file that cannot be read (missing, malformed, wrong
            ``password``).
    """
    if unsupported:
        names = sorted("ssl_" + name for name in unsupported)
        raise ConfigurationError(f"TLS option(s) {names} not supported by the multiplexing client")
    if isinstance(cert_reqs, str) and cert_reqs.lower() not in _CERT_REQS:
        raise ConfigurationError(
            f"ssl_cert_reqs={cert_reqs!r} must be one of {', '.join(_CERT_REQS)}"
        )
    try:
        context = ssl_module.create_default_context(cafile=ca_certs, capath=ca_path)
        if certfile:
            context.load_cert_chain(certfile, keyfile, password)
    except OSError as exc:  # ssl.SSLError is one; the password is never in the message
        files = {"ssl_ca_certs": ca_certs, "ssl_ca_path": ca_path, "ssl_certfile": certfile,
                 "ssl_keyfile": keyfile}  # fmt: skip
        named = ", ".join(f"{k}={v}" for k, v in files.items() if v)
        raise ConfigurationError(f"TLS files could not be loaded ({named}): {exc}") from exc
    reqs = _CERT_REQS[cert_reqs.lower()] if isinstance(cert_reqs, str) else cert_reqs
    # check_hostname must be off before verify_mode may drop to CERT_NONE.
    context.check_hostname = (
        bool(check_hostname) if check_hostname is not None else (reqs == ssl_module.CERT_REQUIRED)
    )
    context.verify_mode = ssl_module.VerifyMode(reqs)
    return context
