"""Django keys to cachelayer keys and back, and Django key patterns to store globs.

A Django key becomes a store key in three steps: Django's ``make_key`` (``KEY_FUNCTION``,
by default ``KEY_PREFIX:VERSION:key``), :func:`escape` (``%``, ``{`` and ``}``
percent-encoded, so no Django key acts as a Redis Cluster hash tag), then the Cache's
``namespace:v<version>:`` in front (keys that come out at ``max_key_length`` or longer
are stored hashed). :class:`KeyTemplate` runs the first two steps on a caller's glob
(``delete_pattern``, ``iter_keys``) with every fixed part glob-escaped, so only the
caller's pattern is a glob, and runs them backwards on the keys a scan finds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["KeyTemplate", "escape", "glob_escape", "unescape"]

_ESCAPED = re.compile("%(25|7B|7D)")
_UNESCAPED = {"25": "%", "7B": "{", "7D": "}"}
_GLOB = re.compile(r"([*?\[\]\\])")
# Stands for the caller's key while the KEY_FUNCTION shapes the fixed parts around it.
_MARK = "\x00cachelayer-key\x00"


def escape(key: str) -> str:
    """Make a Django key safe as a cachelayer key, injectively: ``%``, ``{`` and ``}`` are
    percent-encoded, so no Django key can hold a stray ``}`` or act as a hash tag."""
    if "%" in key or "{" in key or "}" in key:
        return key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return key


def unescape(key: str) -> str:
    """The inverse of :func:`escape`."""
    return _ESCAPED.sub(lambda m: _UNESCAPED[m.group(1)], key) if "%" in key else key


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob that matches exactly ``text``."""
    return _GLOB.sub(r"\\\1", text)


class KeyTemplate:
    """How one backend's ``KEY_FUNCTION`` places a key between fixed parts, for one
    ``KEY_PREFIX`` and version: ``head + key + tail`` (already escaped).

    Args:
        make_key: the backend's ``make_key(key, version)``.
        version: the Django cache version the keys are made with.

    Raises:
        ValueError: the ``KEY_FUNCTION`` does not keep the key as it is inside the key it
            makes (it hashes or reverses it, say): patterns cannot be mapped through it.
    """

    def __init__(self, make_key: Callable[[Any, int | None], str], version: int | None) -> None:
        made = make_key(_MARK, version)
        parts = made.split(_MARK) if isinstance(made, str) else []
        if len(parts) != 2:
            raise ValueError(
                "delete_pattern() and iter_keys() need a KEY_FUNCTION that keeps the key "
                "unchanged inside the key it makes (as Django's default "
                "KEY_PREFIX:VERSION:key does)"
            )
        self.head, self.tail = escape(parts[0]), escape(parts[1])
        self._make_key = make_key
        self._version = version

    def glob(self, pattern: str) -> str:
        """The glob (before the Cache's prefix) for the Django keys that match ``pattern``:
        only ``pattern`` is a glob; ``KEY_PREFIX`` and the version match literally."""
        return glob_escape(self.head) + escape(pattern) + glob_escape(self.tail)

    def reverse(self, made: str) -> str | None:
        """The caller's key that :func:`escape` of ``make_key`` turned into ``made``, or
        None when ``made`` is not one of this template's keys."""
        end = len(made) - len(self.tail)
        if end < len(self.head) or not made.startswith(self.head) or not made.endswith(self.tail):
            return None
        key = unescape(made[len(self.head) : end])
        return key if escape(self._make_key(key, self._version)) == made else None
