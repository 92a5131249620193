"""Redis URLs are checked when the Cache is made, and no message ever shows a secret."""

from __future__ import annotations

import pytest

from cachelayer import Cache, ConfigurationError


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("redis://localhost:6379/seven", "seven"),  # redis-py silently used db 0
        ("redis://localhost:6379/0?socket_timout=0.2", "socket_timout"),  # a typo
    ],
)
def test_bad_url_is_refused_when_the_cache_is_made(url: str, names: str) -> None:
    """A wrong database or a mistyped option fails at Cache(), naming what was wrong,
    instead of being ignored or failing every call later."""
    with pytest.raises(ConfigurationError, match=names):
        Cache(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis+tls://:s3cret@localhost:6379/0",  # a mistyped scheme
        "redis://:s3cret@localhost:6379/seven",
        "redis://u:s3cret@localhost:6379/0?socket_timout=1",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    """ConfigurationError messages redact the URL's password."""
    with pytest.raises(ConfigurationError) as caught:
        Cache(url)
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


def test_repr_hides_passwords_in_userinfo_and_query() -> None:
    """repr(cache) shows the URL without the password, in userinfo or query string."""
    cache = Cache("redis://user:s3cret@127.0.0.1:1/0?ssl_password=s3cret&socket_timeout=1")
    assert "s3cret" not in repr(cache)
    assert repr(cache).count("***") == 2
    cache.close()


def test_pool_options_in_the_url_are_accepted() -> None:
    """Options of redis-py's pools in the URL are fine (the sync face uses them)."""
    cache = Cache("redis://127.0.0.1:1/0?max_connections=5&health_check_interval=10")
    cache.close()
