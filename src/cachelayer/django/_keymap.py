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


def _superset(pattern: str) -> str:
    """``pattern`` over escaped keys: literals escaped, ``?`` and classes widened to ``*``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(glob_escape(escape(pattern[i + 1])))
            i += 2
            continue
        if char == "[":  # a class ends at its first unescaped "]" (Redis's rule)
            j = i + 2 if pattern[i + 1 : i + 2] == "^" else i + 1
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            out.append("*")
            i = j + 1
            continue
        out.append("*" if char in "*?" else glob_escape(escape(char)))
        i += 1
    return "".join(out)


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
        """A glob (before the Cache's prefix) matching at least the store keys of the
        Django keys that match ``pattern``; ``KEY_PREFIX`` and the version literally.

        Escaping turns one character (``%``, ``{``, ``}``) into three, so a ``?`` or a
        ``[...]`` class of the pattern cannot be carried over as it is: each becomes
        ``*``. The keys found are then matched against ``pattern`` itself
        (:meth:`matches`), so the superset costs a longer scan, never a wrong key.
        """
        return glob_escape(self.head) + _superset(pattern) + glob_escape(self.tail)

    @staticmethod
    def matches(pattern: str) -> Callable[[str], bool]:
        """Does a Django key (as :meth:`reverse` gives it) match ``pattern``?"""
        from ..backends.memory import compile_glob

        return lambda key: compile_glob(pattern).fullmatch(key) is not None

    def reverse(self, made: str) -> str | None:
        """The caller's key that :func:`escape` of ``make_key`` turned into ``made``, or
        None when ``made`` is not one of this template's keys."""
        end = len(made) - len(self.tail)
        if end < len(self.head) or not made.startswith(self.head) or not made.endswith(self.tail):
            return None
        key = unescape(made[len(self.head) : end])
        return key if escape(self._make_key(key, self._version)) == made else None
