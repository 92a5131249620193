"""TLS (``rediss://``) against real redis-server processes with certificates made here.

A certificate authority, server certificates and a client certificate are made once per
module with the ``openssl`` command (no Python dependency); each test starts the
TLS-only server it needs (``--port 0``: no plaintext port) and stops it by its pid.
Both faces are checked: the sync one is redis-py's TLS connection, the asyncio one the
multiplexer's own (``_multiplex.ssl_context``), built from the same URL options.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from cachelayer import Cache, CircuitBreaker, ConfigurationError
from cachelayer.testing import find_server_binary, free_port

FACES = ["sync", "async"]


# -- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Files of a test CA, the certificates it signed, and an unrelated CA."""

    ca: Path
    server_cert: Path  # names 127.0.0.1 and localhost
    server_key: Path
    other_name_cert: Path  # names only cache.internal (a hostname mismatch here)
    other_name_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path  # the same key, encrypted with CLIENT_KEY_PASSWORD
    wrong_ca: Path


CLIENT_KEY_PASSWORD = "client-key-pw"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _signed(cwd: Path, ca: str, name: str, subject: str, san: str | None) -> None:
    """``<name>.key`` and ``<name>.crt`` signed by CA ``<ca>``."""
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd,
    )  # fmt: skip
    ext = cwd / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name,
        cwd=cwd,
    )  # fmt: skip


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
        "-subj", f"/CN={name}", cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    """The certificates, in a directory removed at the end of the module."""
    assert shutil.which("openssl"), "the TLS tests need the openssl command"
    with tempfile.TemporaryDirectory(prefix="cachelayer-tls-") as name:
        d = Path(name)
        _ca(d, "ca")
        _ca(d, "wrong-ca")
        _signed(d, "ca", "server", "/CN=localhost", "IP:127.0.0.1,DNS:localhost")
        _signed(d, "ca", "other-name", "/CN=cache.internal", "DNS:cache.internal")
        _signed(d, "ca", "client", "/CN=shop-app", None)
        _openssl(
            "pkey", "-in", "client.key", "-out", "client-encrypted.key", "-aes256",
            "-passout", f"pass:{CLIENT_KEY_PASSWORD}", cwd=d,
        )  # fmt: skip
        yield Pki(
            ca=d / "ca.crt",
            server_cert=d / "server.crt",
            server_key=d / "server.key",
            other_name_cert=d / "other-name.crt",
            other_name_key=d / "other-name.key",
            client_cert=d / "client.crt",
            client_key=d / "client.key",
            client_key_encrypted=d / "client-encrypted.key",
            wrong_ca=d / "wrong-ca.crt",
        )


# -- a TLS-only server -----------------------------------------------------------------------


class TlsServer:
    """A private redis-server listening only on a TLS port; stopped by its pid.

    (``cachelayer.testing.RedisServer`` checks readiness with a plaintext PING, which a
    TLS-only server cannot answer.)
    """

    def __init__(self, pki: Pki, *args: str, cert: Path | None = None, key: Path | None = None):
        self.pki = pki
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="cachelayer-tls-redis-")
        cmd = [
            find_server_binary(),
            "--port", "0",
            "--tls-port", str(self.port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert or pki.server_cert),
            "--tls-key-file", str(key or pki.server_key),
            "--tls-ca-cert-file", str(pki.ca),
            "--save", "", "--appendonly", "no", "--dir", self._dir.name,
            "--daemonize", "no", "--loglevel", "warning",
            *args,
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.check_hostname = False  # the readiness check only; tests check names
        context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        return context

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "redis-server exited at start (TLS built in?)"
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                    self._context().wrap_socket(raw) as tls,
                ):
                    tls.sendall(b"PING\r\n")
                    if tls.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"TLS redis-server did not answer on {self.port} in {timeout} s")

    def url(self, scheme: str = "rediss", host: str = "127.0.0.1", **options: Any) -> str:
        query = {"socket_timeout": 2, "socket_connect_timeout": 2, **options}
        return f"{scheme}://{host}:{self.port}/0?{urlencode(query)}"

    def keys(self) -> list[bytes]:
        """Every key, read over TLS with a client certificate (an admin's view)."""
        import redis

        client = redis.Redis(
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.pki.ca),
            ssl_certfile=str(self.pki.client_cert),
            ssl_keyfile=str(self.pki.client_key),
            ssl_check_hostname=False,
        )
        try:
            return sorted(client.keys("*"))
        finally:
            client.close()

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._dir.cleanup()


@pytest.fixture
def server(pki: Pki) -> Iterator[TlsServer]:
    """A TLS-only server that does not ask clients for a certificate."""
    tls = TlsServer(pki, "--tls-auth-clients", "no")
    yield tls
    tls.close()


@pytest.fixture
def mtls_server(pki: Pki) -> Iterator[TlsServer]:
    """A TLS-only server that requires a client certificate signed by the test CA."""
    tls = TlsServer(pki, "--tls-auth-clients", "yes")
    yield tls
    tls.close()


# -- helpers ---------------------------------------------------------------------------------


def make(url: str, **options: Any) -> Cache:
    options.setdefault("breaker", CircuitBreaker(threshold=0))  # every failure counted
    return Cache(url, namespace="tls", **options)


def run_face(face: str, cache: Cache, work: Any) -> Any:
    """Run ``work(cache, face)`` (a coroutine function) and close the cache in its loop."""

    async def main() -> Any:
        try:
            return await work(cache, face)
        finally:
            if face == "async":
                await cache.aclose()
            else:
                cache.close()

    return asyncio.run(main())


async def call(cache: Cache, face: str, method: str, *args: Any, **kwargs: Any) -> Any:
    if face == "async":
        return await getattr(cache, "a" + method)(*args, **kwargs)
    return getattr(cache, method)(*args, **kwargs)


async def round_trip(cache: Cache, face: str) -> None:
    """get/set/get_or_load/invalidate_tags all reach the server, with no store error."""
    await call(cache, face, "set", "k", {"v": 1})
    assert await call(cache, face, "get", "k") == {"v": 1}
    assert await call(cache, face, "get_or_load", "t", lambda: 1, tags=["tag"]) == 1
    assert await call(cache, face, "get_or_load", "t", lambda: 2, tags=["tag"]) == 1  # a hit
    assert await call(cache, face, "invalidate_tags", "tag") is True
    assert await call(cache, face, "get_or_load", "t", lambda: 3, tags=["tag"]) == 3
    s = cache.stats
    assert (s.store_errors, s.invalidation_errors, s.hits) == (0, 0, 2)
    await call(cache, face, "clear")


async def fails_open(cache: Cache, face: str) -> None:
    """No exception reaches the caller: reads load, writes are dropped, errors counted."""
    await call(cache, face, "set", "k", 1)
    assert await call(cache, face, "get", "k") is None
    assert await call(cache, face, "get_or_load", "t", lambda: "loaded", tags=["tag"]) == "loaded"
    assert await call(cache, face, "invalidate_tags", "tag") is False
    assert cache.stats.store_errors >= 3
    assert cache.stats.invalidation_errors >= 1


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
def test_rediss_with_the_servers_ca(server: TlsServer, face: str) -> None:
    """rediss:// with ssl_ca_certs verifies the server (certificate and name) and works."""
    run_face(face, make(server.url(ssl_ca_certs=server.pki.ca)), round_trip)
    assert server.keys() == []  # cleared through the same TLS connection


@pytest.mark.parametrize("face", FACES)
def test_valkeys_scheme_is_rediss(server: TlsServer, face: str) -> None:
    """valkeys:// is rediss://."""
    run_face(face, make(server.url("valkeys", ssl_ca_certs=server.pki.ca)), round_trip)


@pytest.mark.parametrize("face", FACES)
def test_a_wrong_ca_fails_open(server: TlsServer, face: str) -> None:
    """A server certificate the client's CA did not sign: no connection, no exception;
    every call falls back (the loader's value) and counts a store error."""
    run_face(face, make(server.url(ssl_ca_certs=server.pki.wrong_ca)), fails_open)
    assert server.keys() == []


@pytest.mark.parametrize("face", FACES)
def test_the_system_cas_do_not_trust_a_private_ca(server: TlsServer, face: str) -> None:
    """Without ssl_ca_certs the system's CAs are used: a private CA's server is refused."""
    run_face(face, make(server.url()), fails_open)


@pytest.mark.parametrize("face", FACES)
def test_cert_reqs_none_skips_verification(server: TlsServer, face: str) -> None:
    """ssl_cert_reqs=none encrypts without verifying (a wrong CA is then no obstacle)."""
    url = server.url(ssl_cert_reqs="none", ssl_ca_certs=server.pki.wrong_ca)
    run_face(face, make(url), round_trip)


@pytest.mark.parametrize("face", FACES)
def test_the_server_name_is_checked(pki: Pki, face: str) -> None:
    """A certificate of the right CA for another name fails open; ssl_check_hostname=false
    accepts it (the CA is still checked)."""
    other = TlsServer(pki, "--tls-auth-clients", "no", cert=pki.other_name_cert,
                      key=pki.other_name_key)  # fmt: skip
    try:
        run_face(face, make(other.url(ssl_ca_certs=pki.ca)), fails_open)
        relaxed = other.url(ssl_ca_certs=pki.ca, ssl_check_hostname="false")
        run_face(face, make(relaxed), round_trip)
        wrong_ca = other.url(ssl_ca_certs=pki.wrong_ca, ssl_check_hostname="false")
        run_face(face, make(wrong_ca), fails_open)
    finally:
        other.close()


@pytest.mark.parametrize("face", FACES)
def test_client_certificate(mtls_server: TlsServer, face: str) -> None:
    """A server that requires client certificates: ssl_certfile and ssl_keyfile work;
    without them every call fails open."""
    pki = mtls_server.pki
    run_face(face, make(mtls_server.url(ssl_ca_certs=pki.ca)), fails_open)
    url = mtls_server.url(
        ssl_ca_certs=pki.ca, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key
    )
    run_face(face, make(url), round_trip)


@pytest.mark.parametrize("face", FACES)
def test_client_key_with_a_password(mtls_server: TlsServer, face: str) -> None:
    """An encrypted client key is opened with ssl_password (which repr() masks)."""
    pki = mtls_server.pki
    url = mtls_server.url(
        ssl_ca_certs=pki.ca,
        ssl_certfile=pki.client_cert,
        ssl_keyfile=pki.client_key_encrypted,
        ssl_password=CLIENT_KEY_PASSWORD,
    )
    cache = make(url)
    assert CLIENT_KEY_PASSWORD not in repr(cache)
    run_face(face, cache, round_trip)


def test_local_tier_over_tls(server: TlsServer) -> None:
    """The local tier's purge subscription runs over TLS too."""
    url = server.url(ssl_ca_certs=server.pki.ca)
    reader = make(url, local={"max_entries": 10})
    writer = make(url, local={"max_entries": 10})
    try:
        assert reader.wait_local(5)
        assert writer.wait_local(5)
        writer.set("k", 1)
        assert reader.get("k") == 1
        writer.set("k", 2)
        deadline = time.monotonic() + 5
        while reader.get("k") != 2:
            assert time.monotonic() < deadline, "the purge never arrived"
            time.sleep(0.01)
        writer.clear()
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize(
    "option",
    ["ssl_ca_data=x", "ssl_validate_ocsp=true", "ssl_min_version=772", "ssl_ciphers=HIGH"],
)
def test_unsupported_tls_options_are_refused_when_the_cache_is_made(
    server: TlsServer, option: str
) -> None:
    """A TLS option the asyncio face cannot honour is a ConfigurationError naming it when
    the Cache is made, never a silently weaker connection."""
    name = option.split("=", 1)[0]
    with pytest.raises(ConfigurationError, match=name):
        Cache(f"rediss://127.0.0.1:{server.port}/0?{option}", namespace="tls")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs=/nonexistent/ca.pem"),
        ("ssl_cert_reqs=requierd", "ssl_cert_reqs='requierd' must be one of"),
    ],
)
def test_bad_tls_settings_are_configuration_errors(option: str, message: str) -> None:
    """A CA file that is not there, or a misspelt ssl_cert_reqs, is a ConfigurationError
    when the Cache is made (not a FileNotFoundError or KeyError)."""
    with pytest.raises(ConfigurationError, match=message):
        Cache(f"rediss://127.0.0.1:{free_port()}/0?{option}", namespace="tls")


def test_a_wrong_key_password_is_a_configuration_error(pki: Pki) -> None:
    """A client key that the ssl_password does not open is refused when the Cache is
    made, and the message does not show the password."""
    query = urlencode(
        {
            "ssl_certfile": pki.client_cert,
            "ssl_keyfile": pki.client_key_encrypted,
            "ssl_password": "not-the-password",
        }
    )
    with pytest.raises(ConfigurationError, match="ssl_keyfile") as refused:
        Cache(f"rediss://127.0.0.1:{free_port()}/0?{query}", namespace="tls")
    assert "not-the-password" not in str(refused.value)


@pytest.mark.parametrize("face", FACES)
def test_url_tls_options_win_over_keywords_on_both_faces(server: TlsServer, face: str) -> None:
    """As redis-py does for the sync face, a TLS option in the URL wins over the same
    keyword, and the keyword's other TLS options still apply: both faces connect alike."""
    from cachelayer.backends.redis import RedisStore

    url = server.url(ssl_cert_reqs="none")  # the URL: do not verify
    store = RedisStore(url, ssl_ca_certs=str(server.pki.wrong_ca), ssl_cert_reqs="required")
    run_face(face, Cache(store, namespace="tls", breaker=CircuitBreaker(threshold=0)), round_trip)
