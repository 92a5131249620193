"""HTTP caching rules as pure functions: Cache-Control, freshness, ETags, conditionals.

Nothing here does I/O or knows ASGI beyond its header lists (``[(name, value), ...]``
as bytes, names lower-case), so every rule is tested on its own. The middleware
(``_middleware.py``) applies them. References: RFC 9110 (semantics, conditional
requests, ETags), RFC 9111 (caching), RFC 5861 (stale-while-revalidate).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import re
from collections.abc import Collection, Iterable
from typing import NamedTuple

__all__ = [
    "Freshness",
    "etag_matches",
    "header",
    "parse_cache_control",
    "storage_policy",
    "strong_etag",
]

Headers = Iterable[tuple[bytes, bytes]]

# directive[=value], value a token or a quoted-string (which may hold commas)
_DIRECTIVE = re.compile(r'\s*([^\s=,]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)')
_DIGITS = re.compile(r"[0-9]+")
_ETAG = re.compile(r'(?:W/)?"[^"]*"')


def header(headers: Headers, name: bytes) -> str | None:
    """All values of header ``name`` joined with ``", "`` (latin-1), or None if absent."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """``Cache-Control`` as ``{directive: argument or None}``, names lower-case.

    A directive that appears twice keeps its first argument, except the delta-seconds
    directives, which keep the smallest (RFC 9111 4.2.1: the most restrictive).
    """
    directives: dict[str, str | None] = {}
    if not value:
        return directives
    for match in _DIRECTIVE.finditer(value):
        name = match.group(1).lower()
        arg = match.group(2)
        if arg is not None:
            arg = arg.strip()
            if arg.startswith('"') and arg.endswith('"') and len(arg) >= 2:
                arg = arg[1:-1]
        if name in directives and name in _SECONDS:
            previous, current = _seconds(directives[name]), _seconds(arg)
            if previous is not None and (current is None or current < previous):
                directives[name] = arg
            continue
        directives.setdefault(name, arg)
    return directives


_SECONDS = frozenset({"max-age", "s-maxage", "stale-while-revalidate"})


def _seconds(arg: str | None) -> int | None:
    """A delta-seconds argument, or None when it is missing or malformed."""
    if arg is None or not _DIGITS.fullmatch(arg):
        return None
    return int(arg)


class Freshness(NamedTuple):
    """How long a stored response is fresh, then how long it may be served stale."""

    ttl: float
    stale: float


def storage_policy(
    status: int,
    headers: Headers,
    *,
    statuses: Collection[int],
    covered: Collection[str],
    default_ttl: float | None,
    max_ttl: float,
    now: float,
) -> Freshness | None:
    """Whether a shared cache may store this response, and for how long; None if not.

    Args:
        status: the response's status code; only ``statuses`` are stored.
        headers: the response's headers.
        covered: lower-case request header names the cache key includes; a response
            whose ``Vary`` names any other header (or ``*``) is not stored.
        default_ttl: freshness when the response states none, and the opt-in to store
            responses that do not say they may be shared. None (the middleware's
            default) stores only responses that say so: ``Cache-Control`` ``public``,
            ``s-maxage`` or ``max-age`` (``public`` needs ``Expires`` for a freshness).
        max_ttl: caps the freshness and, separately, the stale window.
        now: the clock, for ``Expires``.

    Not stored: another status, ``Set-Cookie``, ``Cache-Control`` ``no-store``,
    ``private`` or ``no-cache`` (this cache would have to revalidate every use), a
    ``Vary`` it cannot honour, a server-sent-events stream (``text/event-stream``: it is
    never complete, and each client must get its own), a response that does not say it
    may be shared when ``default_ttl`` is None, and a freshness of zero (``max-age=0``,
    a past or invalid ``Expires``). Freshness is ``s-maxage``, else ``max-age``, else
    ``Expires`` minus ``Date``, else ``default_ttl``. The stale window is
    ``stale-while-revalidate``, unless ``must-revalidate`` or ``proxy-revalidate``
    forbid serving stale.
    """
    headers = list(headers)
    if status not in statuses:
        return None
    if any(k.lower() == b"set-cookie" for k, _ in headers):
        return None
    content_type = header(headers, b"content-type") or ""
    if content_type.split(";", 1)[0].strip().lower() == "text/event-stream":
        return None
    cc = parse_cache_control(header(headers, b"cache-control"))
    if "no-store" in cc or "private" in cc or "no-cache" in cc:
        return None
    if default_ttl is None and not ("public" in cc or "s-maxage" in cc or "max-age" in cc):
        return None  # it does not say a shared cache may keep it (custom auth, client IP)
    vary = header(headers, b"vary")
    if vary is not None:
        names = {v.strip().lower() for v in vary.split(",") if v.strip()}
        if "*" in names or not names <= set(covered):
            return None
    ttl: float | None
    if "s-maxage" in cc or "max-age" in cc:
        # A malformed value makes the response stale at once (RFC 9111 4.2.1).
        ttl = _seconds(cc["s-maxage"] if "s-maxage" in cc else cc["max-age"]) or 0
    else:
        expires = header(headers, b"expires")
        ttl = default_ttl if expires is None else _expires_in(expires, headers, now)
    if ttl is None or ttl <= 0:
        return None
    stale = 0.0
    if "must-revalidate" not in cc and "proxy-revalidate" not in cc:
        stale = float(_seconds(cc.get("stale-while-revalidate")) or 0)
    return Freshness(float(min(ttl, max_ttl)), min(stale, max_ttl))


def _expires_in(expires: str, headers: Headers, now: float) -> float:
    """Seconds until ``Expires`` (relative to ``Date`` when present); 0 if invalid."""
    try:
        deadline = email.utils.parsedate_to_datetime(expires).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0  # an invalid Expires means "already expired" (RFC 9111 5.3)
    date = header(headers, b"date")
    if date is not None:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            now = email.utils.parsedate_to_datetime(date).timestamp()
    return deadline - now


def strong_etag(body: bytes) -> str:
    """A strong ETag for ``body``: the quoted BLAKE2b-128 hex digest of its bytes.

    It depends on the bytes alone, so every worker, and every restart, computes the same
    tag for the same body.
    """
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    """``If-None-Match`` against an entity tag, by the weak comparison (RFC 9110 13.1.2).

    ``*`` matches any current representation; ``W/`` prefixes are ignored on both sides.
    """
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.removeprefix("W/") == opaque for tag in _ETAG.findall(if_none_match))
