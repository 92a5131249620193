"""The multiplexing asyncio client against real Redis: ordering, errors, faults, set-up.

Tests that fault the server (SIGSTOP, CLIENT KILL, ACL, SCRIPT FLUSH, CONFIG SET) use a
private server of their own; the others use the suite's shared one under a fresh key
namespace and delete their keys. Every wait is bounded: a hang fails the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hiredis
import pytest
import redis
import redis.exceptions as rx

from cachelayer.backends._multiplex import (
    Arg,
    Multiplexer,
    PendingLimitExceeded,
    pack_command_py,
)
from cachelayer.testing import RedisServer, free_port


@pytest.fixture
def prefix() -> str:
    return "mx" + uuid.uuid4().hex[:10] + ":"


@pytest.fixture
async def mux(redis_url: str, prefix: str) -> AsyncIterator[Multiplexer]:
    """A client on the shared server; its keys are deleted afterwards."""
    client = Multiplexer.from_url(redis_url, timeout=2.0, connect_timeout=2.0)
    yield client
    admin = redis.Redis.from_url(redis_url)
    keys = list(admin.scan_iter(match=prefix + "*", count=1000))
    if keys:
        admin.delete(*keys)
    admin.close()
    await client.close()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A private server this test may fault; resumed if a test left it stopped."""
    with RedisServer() as private:
        yield private
        os.kill(private.pid, signal.SIGCONT)


async def ticks(n: int) -> None:
    """Let the loop run ``n`` iterations (tasks start, queued batches flush)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def client_id(client: Multiplexer) -> int:
    reply = await client.execute("CLIENT", "ID")
    assert isinstance(reply, int)
    return reply


async def test_lone_caller_gets_raw_replies(mux: Multiplexer, prefix: str) -> None:
    """One caller: replies come back as redis-py returns them raw."""
    assert await mux.execute("SET", prefix + "a", b"\x00v") == b"OK"
    assert await mux.execute("GET", prefix + "a") == b"\x00v"
    assert await mux.execute("GET", prefix + "missing") is None
    assert await mux.execute("RPUSH", prefix + "l", 1, 2.5, "x") == 3
    assert await mux.execute("LRANGE", prefix + "l", 0, -1) == [b"1", b"2.5", b"x"]
    assert mux.pending == 0


@pytest.mark.parametrize("connections", [1, 2])
async def test_1000_coroutines_each_get_their_own_reply(
    redis_url: str, prefix: str, connections: int
) -> None:
    """1,000 concurrent callers reading their own keys each get their own value, 5 times."""
    async with Multiplexer.from_url(redis_url, timeout=2.0, connections=connections) as client:
        n = 1000
        await client.execute("MSET", *[x for i in range(n) for x in (f"{prefix}{i}", f"v{i}")])

        async def reader(i: int) -> None:
            for _ in range(5):
                assert await client.execute("GET", f"{prefix}{i}") == f"v{i}".encode()

        await asyncio.wait_for(asyncio.gather(*(reader(i) for i in range(n))), 10)
        assert client.pending == 0
        await client.execute("DEL", *[f"{prefix}{i}" for i in range(n)])


async def test_execute_many_replies_in_order_errors_in_place(
    mux: Multiplexer, prefix: str
) -> None:
    """execute_many returns replies in order; an error reply stands in its command's place."""
    commands = [
        ("SET", prefix + "s", "x"),
        ("LPUSH", prefix + "s", "y"),  # WRONGTYPE
        ("GET", prefix + "s"),
        ("GET", prefix + "none"),
    ]
    replies = await mux.execute_many(commands, raise_on_error=False)
    assert replies[0] == b"OK"
    assert isinstance(replies[1], rx.ResponseError)
    assert "WRONGTYPE" in str(replies[1])
    assert replies[2:] == [b"x", None]
    with pytest.raises(rx.ResponseError, match="WRONGTYPE"):
        await mux.execute_many(commands)
    assert await mux.execute_many([]) == []
    assert await mux.execute("GET", prefix + "s") == b"x"


async def test_error_reply_fails_only_its_caller(mux: Multiplexer, prefix: str) -> None:
    """Bad commands among 300 concurrent good ones fail alone; the others are unaffected."""
    await mux.execute("SET", prefix + "k", "v")
    calls = [
        mux.execute("NOSUCHCOMMAND") if i % 10 == 0 else mux.execute("GET", prefix + "k")
        for i in range(300)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 10 == 0:
            assert isinstance(result, rx.ResponseError)
        else:
            assert result == b"v"


async def test_evalsha_reloads_after_script_flush(server: RedisServer) -> None:
    """evalsha runs by SHA; after SCRIPT FLUSH it reloads the script, for every caller."""
    script = "return {KEYS[1], ARGV[1]}"
    async with Multiplexer.from_url(server.url, timeout=2.0) as client:
        assert await client.evalsha(script, ["k"], ["a"]) == [b"k", b"a"]
        await client.execute("SCRIPT", "FLUSH")
        results = await asyncio.gather(*(client.evalsha(script, ["k"], [i]) for i in range(50)))
        assert results == [[b"k", str(i).encode()] for i in range(50)]
        with pytest.raises(rx.ResponseError):
            await client.evalsha("return redis.call('NOSUCHCOMMAND')")


async def test_cancelled_callers_do_not_desynchronise(mux: Multiplexer, prefix: str) -> None:
    """Callers cancelled while queued or in flight: later replies still reach their owners."""
    n = 300
    await mux.execute("MSET", *[x for i in range(n) for x in (f"{prefix}{i}", i)])
    before = await client_id(mux)
    tasks = [asyncio.create_task(mux.execute("GET", f"{prefix}{i}")) for i in range(n)]
    await ticks(1)  # all tasks ran: the first command is written, the rest are queued
    assert mux.pending == n
    for task in tasks[1::3]:
        task.cancel()  # queued, not yet written
    await ticks(1)  # the queued batch is written
    for task in tasks[2::3]:
        task.cancel()  # written, reply not yet read
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert result == str(i).encode()
        else:
            assert isinstance(result, asyncio.CancelledError)
    again = await asyncio.gather(*(mux.execute("GET", f"{prefix}{i}") for i in range(n)))
    assert again == [str(i).encode() for i in range(n)]
    assert await client_id(mux) == before  # the same connection served it all


async def test_cancelled_execute_many_does_not_desynchronise(
    mux: Multiplexer, prefix: str
) -> None:
    """A cancelled execute_many discards its replies; the next calls get their own."""
    await mux.execute("SET", prefix + "a", "1")
    task = asyncio.create_task(mux.execute_many([("GET", prefix + "a")] * 100))
    await ticks(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await mux.execute("INCR", prefix + "a") == 2


async def test_client_kill_fails_all_pending_and_reconnects(server: RedisServer) -> None:
    """CLIENT KILL mid-batch: every waiting caller gets ConnectionError; the next reconnects."""
    admin = redis.Redis.from_url(server.url)
    async with Multiplexer.from_url(server.url, timeout=5.0) as client:
        killed = await client_id(client)
        # BLPOP holds the connection, so the GETs behind it stay unanswered.
        tasks = [asyncio.create_task(client.execute("BLPOP", "nothing", 5))]
        tasks += [asyncio.create_task(client.execute("GET", f"k{i}")) for i in range(50)]
        await ticks(2)
        assert client.pending == 51
        started = time.monotonic()
        await asyncio.to_thread(admin.execute_command, "CLIENT", "KILL", "ID", killed)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
        assert time.monotonic() - started < 1.0
        assert all(isinstance(r, rx.ConnectionError) for r in results), results
        assert client.pending == 0
        assert await client.execute("SET", "k1", "after") == b"OK"
        assert await client_id(client) != killed
    admin.close()


async def test_stopped_server_times_out_then_recovers(server: RedisServer) -> None:
    """SIGSTOPped server: calls fail with TimeoutError within ~timeout; SIGCONT: they work."""
    async with Multiplexer.from_url(server.url, timeout=0.1, connect_timeout=0.1) as client:
        assert await client.execute("SET", "k", "v") == b"OK"
        os.kill(server.pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # in flight on the old connection, then on a new one
                started = time.monotonic()
                results = await asyncio.wait_for(
                    asyncio.gather(
                        *(client.execute("GET", "k") for _ in range(20)), return_exceptions=True
                    ),
                    2,
                )
                assert time.monotonic() - started < 0.5
                assert all(isinstance(r, rx.TimeoutError) for r in results), results
                assert client.pending == 0
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert await asyncio.wait_for(client.execute("GET", "k"), 2) == b"v"


async def test_stopped_server_connect_times_out_once_for_a_burst(server: RedisServer) -> None:
    """AUTH to a stopped server: a burst of callers shares one connect, failed in time."""
    url = server.url.replace("redis://", "redis://:pw@")
    client = Multiplexer.from_url(url, timeout=0.1, connect_timeout=0.1)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.execute("PING") for _ in range(100)), return_exceptions=True
        )
        assert time.monotonic() - started < 0.5
        assert all(isinstance(r, rx.TimeoutError) for r in results), results
        assert "connect_timeout" in str(results[0])
    finally:
        os.kill(server.pid, signal.SIGCONT)
    await client.close()


async def test_burst_of_first_callers_opens_one_connection(server: RedisServer) -> None:
    """100 callers arriving before any connection exists share a single connect."""
    admin = redis.Redis.from_url(server.url)
    before = admin.info("stats")["total_connections_received"]
    async with Multiplexer.from_url(server.url, timeout=2.0) as client:
        assert (
            await asyncio.gather(*(client.execute("PING") for _ in range(100))) == [b"PONG"] * 100
        )
    assert admin.info("stats")["total_connections_received"] == before + 1
    admin.close()


async def test_refused_connection_is_a_connection_error() -> None:
    """Nothing listening: a ConnectionError naming the address, and no hang."""
    client = Multiplexer("127.0.0.1", free_port(), connect_timeout=1.0)
    with pytest.raises(rx.ConnectionError, match=r"error connecting to Redis at 127\.0\.0\.1"):
        await client.execute("PING")
    await client.close()


async def test_reply_waiting_for_a_blocked_loop_is_not_a_timeout(
    mux: Multiplexer, redis_url: str, prefix: str
) -> None:
    """timeout=0.05 and the loop blocked 0.2 s with replies in flight: the calls succeed."""
    async with Multiplexer.from_url(redis_url, timeout=0.05) as client:
        await client.execute("SET", prefix + "k", "v")
        lone = asyncio.create_task(client.execute("GET", prefix + "k"))
        await ticks(1)
        assert client.pending == 1  # written at once: the connection was idle
        time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop is the point
        assert await lone == b"v"
        many = [asyncio.create_task(client.execute("GET", prefix + "k")) for _ in range(100)]
        await ticks(2)  # started, and the queued batch written
        time.sleep(0.2)  # noqa: ASYNC251
        assert await asyncio.gather(*many) == [b"v"] * 100


async def test_large_replies_waiting_for_a_blocked_loop_are_not_a_timeout(
    redis_url: str, prefix: str
) -> None:
    """Replies beyond asyncio's 256 KiB read per iteration, behind a blocked loop: success."""
    async with Multiplexer.from_url(redis_url, timeout=0.05) as client:
        await client.execute("SET", prefix + "big", b"x" * 20_000)
        many = [asyncio.create_task(client.execute("GET", prefix + "big")) for _ in range(100)]
        await ticks(2)
        time.sleep(0.2)  # noqa: ASYNC251 - 2 MB of replies wait in the socket meanwhile
        assert await asyncio.gather(*many) == [b"x" * 20_000] * 100


async def test_no_timeouts(redis_url: str) -> None:
    """timeout=None and connect_timeout=None: no deadlines at all."""
    async with Multiplexer.from_url(redis_url, timeout=None, connect_timeout=None) as client:
        assert await asyncio.gather(*(client.execute("PING") for _ in range(10))) == [b"PONG"] * 10


async def test_unsupported_argument_is_a_type_error(mux: Multiplexer, prefix: str) -> None:
    """None or bool arguments are the caller's bug: TypeError, nothing sent."""
    with pytest.raises(TypeError):
        await mux.execute("SET", prefix + "k", None)  # type: ignore[arg-type]
    assert await mux.execute("EXISTS", prefix + "k") == 0


async def test_close_while_connecting_fails_waiters_without_cancelling_them(
    server: RedisServer,
) -> None:
    """close() during a connect: its waiters get a RedisError, never CancelledError."""
    url = server.url.replace("redis://", "redis://:pw@")
    client = Multiplexer.from_url(url, connect_timeout=0.2)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        tasks = [asyncio.create_task(client.execute("PING")) for _ in range(10)]
        await ticks(2)
        await client.close()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
        assert all(isinstance(r, rx.RedisError) for r in results), results
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def test_back_pressure_fails_past_max_pending(redis_url: str, prefix: str) -> None:
    """Past max_pending a call fails at once with PendingLimitExceeded; later calls work."""
    async with Multiplexer.from_url(redis_url, timeout=2.0, max_pending=10) as client:
        await client.execute("SET", prefix + "k", "v")
        results = await asyncio.gather(
            *(client.execute("GET", prefix + "k") for _ in range(50)), return_exceptions=True
        )
        assert results[:10] == [b"v"] * 10
        assert all(isinstance(r, PendingLimitExceeded) for r in results[10:])
        assert isinstance(results[10], rx.ConnectionError)
        assert "max_pending=10" in str(results[10])
        with pytest.raises(PendingLimitExceeded):
            await client.execute_many([("GET", prefix + "k")] * 11)
        assert await client.execute("DEL", prefix + "k") == 1


async def test_acl_user_and_wrong_password(server: RedisServer) -> None:
    """An ACL user authenticates; a wrong password is a clear AuthenticationError."""
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "app", "on", ">app-pw", "~*", "+@all")
    base = f"127.0.0.1:{server.port}"
    async with Multiplexer.from_url(f"redis://app:app-pw@{base}/0") as client:
        assert await client.execute("ACL", "WHOAMI") == b"app"
    client = Multiplexer.from_url(f"redis://app:wrong@{base}/0")
    with pytest.raises(rx.AuthenticationError, match="refused user 'app'"):
        await client.execute("PING")
    await client.close()
    admin.close()


async def test_password_only_and_noauth(server: RedisServer) -> None:
    """requirepass: the password alone authenticates; without it calls fail with NOAUTH."""
    admin = redis.Redis.from_url(server.url)
    admin.config_set("requirepass", "secret")
    admin.close()
    async with Multiplexer.from_url(f"redis://:secret@127.0.0.1:{server.port}/0") as client:
        assert await client.execute("PING") == b"PONG"
    async with Multiplexer.from_url(server.url) as client:
        with pytest.raises(rx.AuthenticationError, match="NOAUTH"):
            await client.execute("PING")


async def test_db_from_url_is_selected(server: RedisServer) -> None:
    """The URL's database is selected on every new connection."""
    async with Multiplexer.from_url(f"redis://127.0.0.1:{server.port}/3") as client:
        await client.execute("SET", "in-three", "1")
    assert redis.Redis(port=server.port, db=3).get("in-three") == b"1"


async def test_unix_socket(tmp_path: Path) -> None:
    """unix:// URLs and path= reach a server on a socket file."""
    sock = str(tmp_path / "redis.sock")
    with RedisServer(args=("--unixsocket", sock, "--unixsocketperm", "700")):
        async with Multiplexer.from_url(f"unix://{sock}?db=2") as client:
            assert await client.execute("SET", "k", "v") == b"OK"
        async with Multiplexer(path=sock, db=2) as client:
            assert await client.execute("GET", "k") == b"v"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made with the openssl CLI)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls(certificate: tuple[Path, Path]) -> None:
    """rediss:// speaks TLS and verifies the server's certificate against ssl_ca_certs."""
    cert, key = certificate
    tls_port = free_port()
    args = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no")  # fmt: skip
    with RedisServer(args=args):
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
        async with Multiplexer.from_url(url) as client:
            results = await asyncio.gather(*(client.execute("ECHO", i) for i in range(100)))
            assert results == [str(i).encode() for i in range(100)]
        untrusted = Multiplexer.from_url(f"rediss://127.0.0.1:{tls_port}/0")
        with pytest.raises(rx.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.execute("PING")
        await untrusted.close()


def test_works_in_successive_event_loops(redis_url: str) -> None:
    """Used from a second event loop, the client opens a connection there."""
    client = Multiplexer.from_url(redis_url, timeout=2.0)

    async def ping_and_close() -> object:
        try:
            return await client.execute("PING")
        finally:
            await client.close()

    assert asyncio.run(ping_and_close()) == b"PONG"
    assert asyncio.run(ping_and_close()) == b"PONG"


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "k"),
        ("SET", "ключ", b"\x00\r\n", 7, -1, 10**20, 1.5, 0.1, memoryview(b"mv")),
        ("PING",),
    ],
)
def test_python_packer_matches_hiredis(args: tuple[Arg, ...]) -> None:
    """The fallback for hiredis < 2.2 encodes commands byte for byte as hiredis does."""
    if not hasattr(hiredis, "pack_command"):  # the floor version: compare with RESP text
        assert pack_command_py(("GET", "k")) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        return
    assert pack_command_py(args) == hiredis.pack_command(args)
    for bad in (None, True, object()):
        with pytest.raises(TypeError):
            pack_command_py(("SET", "k", bad))  # type: ignore[arg-type]


def test_from_url_rejects_unknown_options() -> None:
    """A URL option the client cannot honour is a ConfigurationError, not ignored."""
    from cachelayer.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="decode_responses"):
        Multiplexer.from_url("redis://127.0.0.1/0?decode_responses=true")
    with pytest.raises(ConfigurationError, match="connections"):
        Multiplexer(connections=3)
