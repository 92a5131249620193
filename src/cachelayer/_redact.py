"""Keep credentials out of everything cachelayer prints: reprs, errors, logs, commands."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]

# A query parameter that carries a secret (password=, ssl_password=, token=, ...).
_SECRET_PARAM = re.compile(r"(?i)([?&][^=&]*(?:password|passwd|secret|token)[^=&]*=)[^&]*")


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo and secret-looking query values) as ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not parseable as a URL: hide everything after the scheme
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://***" if sep else "***"
    if password is not None:
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    return _SECRET_PARAM.sub(r"\1***", url)
