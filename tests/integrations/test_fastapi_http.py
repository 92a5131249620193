"""The HTTP rules of the response cache, as pure functions (cachelayer.fastapi._http)."""

from __future__ import annotations

import email.utils
import hashlib

import pytest

from cachelayer.fastapi._http import (
    Freshness,
    etag_matches,
    parse_cache_control,
    storage_policy,
    strong_etag,
)

NOW = 1_700_000_000.0


def policy(
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    status: int = 200,
    default_ttl: float | None = 60.0,
    max_ttl: float = 3600.0,
) -> Freshness | None:
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    return storage_policy(
        status,
        [(k.lower().encode(), v.encode()) for k, v in items],
        statuses={200},
        covered={"accept-encoding", "host", "cookie", "authorization"},
        default_ttl=default_ttl,
        max_ttl=max_ttl,
        now=NOW,
    )


def test_parse_cache_control() -> None:
    """Directives are case-insensitive, arguments unquoted, quoted commas kept together."""
    cc = parse_cache_control('Max-Age=60, no-cache="Set-Cookie, X-A", public,s-maxage = 5')
    assert cc == {"max-age": "60", "no-cache": "Set-Cookie, X-A", "public": None, "s-maxage": "5"}
    assert parse_cache_control(None) == {}
    assert parse_cache_control("") == {}


def test_repeated_delta_seconds_keep_the_most_restrictive() -> None:
    """max-age given twice keeps the smaller value (RFC 9111 4.2.1)."""
    assert parse_cache_control("max-age=60, max-age=10")["max-age"] == "10"
    assert parse_cache_control("max-age=10, max-age=60")["max-age"] == "10"


def test_freshness_sources_in_order() -> None:
    """s-maxage beats max-age beats Expires beats the default TTL; max_ttl caps all."""
    assert policy({"cache-control": "max-age=100, s-maxage=5"}) == Freshness(5, 0)
    assert policy({"cache-control": "max-age=100"}) == Freshness(100, 0)
    assert policy({}) == Freshness(60, 0)
    assert policy({"cache-control": "max-age=100000"}) == Freshness(3600, 0)
    expires = email.utils.formatdate(NOW + 30, usegmt=True)
    assert policy({"expires": expires}) == Freshness(30, 0)
    date = email.utils.formatdate(NOW - 100, usegmt=True)  # Expires counts from Date
    assert policy({"expires": expires, "date": date}) == Freshness(130, 0)


def test_default_ttl_none_stores_only_stated_freshness() -> None:
    """With default_ttl=None, a response without freshness information is not stored."""
    assert policy({}, default_ttl=None) is None
    assert policy({"cache-control": "max-age=5"}, default_ttl=None) == Freshness(5, 0)


def test_default_ttl_none_stores_only_what_says_it_may_be_shared() -> None:
    """With default_ttl=None, only public, s-maxage or max-age make a response storable:
    Expires alone, or public without any freshness, is not enough."""
    expires = email.utils.formatdate(NOW + 30, usegmt=True)
    assert policy({"expires": expires}, default_ttl=None) is None
    assert policy({"cache-control": "public"}, default_ttl=None) is None
    assert policy({"cache-control": "public", "expires": expires}, default_ttl=None) == (
        Freshness(30, 0)
    )
    assert policy({"cache-control": "s-maxage=7"}, default_ttl=None) == Freshness(7, 0)
    assert policy({"cache-control": "public"}, default_ttl=20) == Freshness(20, 0)


@pytest.mark.parametrize("content_type", ["text/event-stream", "Text/Event-Stream; charset=utf-8"])
def test_server_sent_events_are_never_storable(content_type: str) -> None:
    """An event stream is not stored, whatever its Cache-Control says."""
    headers = {"content-type": content_type, "cache-control": "public, max-age=60"}
    assert policy(headers) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"cache-control": "no-store"},
        {"cache-control": "private"},
        {"cache-control": "no-cache"},
        {"cache-control": 'private="x-user"'},
        {"cache-control": "max-age=0"},
        {"cache-control": "s-maxage=0, max-age=60"},
        {"cache-control": "max-age=soon"},
        {"expires": "0"},
        {"expires": email.utils.formatdate(NOW - 1, usegmt=True)},
        {"set-cookie": "session=1"},
        {"vary": "*"},
        {"vary": "Accept-Encoding, X-Tenant"},
    ],
)
def test_not_storable(headers: dict[str, str]) -> None:
    """Each of these forbids a shared cache to store the response (or makes it stale)."""
    assert policy(headers) is None


def test_only_configured_statuses() -> None:
    """A status outside the cacheable set is never stored, whatever its headers say."""
    assert policy({"cache-control": "max-age=60"}, status=404) is None
    assert policy({"cache-control": "max-age=60"}, status=200) is not None


def test_vary_on_covered_headers_is_storable() -> None:
    """Vary naming only headers the key includes (any case) is fine."""
    assert policy({"vary": "accept-encoding, Host"}) == Freshness(60, 0)
    assert policy([("vary", "Accept-Encoding"), ("vary", "Cookie")]) == Freshness(60, 0)


def test_stale_while_revalidate() -> None:
    """stale-while-revalidate gives the stale window, unless revalidation is required."""
    assert policy({"cache-control": "max-age=10, stale-while-revalidate=30"}) == Freshness(10, 30)
    assert policy({"cache-control": "s-maxage=10, stale-while-revalidate=30"}) == Freshness(10, 30)
    for directive in ("must-revalidate", "proxy-revalidate"):
        cc = f"max-age=10, stale-while-revalidate=30, {directive}"
        assert policy({"cache-control": cc}) == Freshness(10, 0)
    assert policy({"cache-control": "max-age=10, stale-while-revalidate=x"}) == Freshness(10, 0)
    capped = policy({"cache-control": "max-age=10, stale-while-revalidate=9999"}, max_ttl=100)
    assert capped == Freshness(10, 100)


def test_strong_etag_is_a_quoted_digest_of_the_body() -> None:
    """The ETag is the BLAKE2b-128 of the bytes, quoted: stable across processes."""
    assert strong_etag(b"abc") == '"' + hashlib.blake2b(b"abc", digest_size=16).hexdigest() + '"'
    assert strong_etag(b"abc") == strong_etag(b"abc")
    assert strong_etag(b"abc") != strong_etag(b"abd")


def test_if_none_match_uses_the_weak_comparison() -> None:
    """W/ is ignored on both sides; lists and * match; anything else does not."""
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a"', '"a"')
    assert etag_matches('"a"', 'W/"a"')
    assert etag_matches('"x", W/"a"', '"a"')
    assert etag_matches(" * ", '"a"')
    assert not etag_matches('"b"', '"a"')
    assert not etag_matches("a", '"a"')  # unquoted: not an entity tag
    assert etag_matches('"a,b"', '"a,b"')  # commas inside the quotes
