"""Which group a Redis key belongs to: cachelayer's own keys by their layout, others by pattern.

Pure functions, no I/O. cachelayer's keys (docs/keys.md) are recognised by their shape:

- values ``<ns>:v<version>:<caller key>``, grouped by *family*: the caller key up to its
  first argument or id (``user:`` for a template ``user:{user_id}``, the qualified name for
  an auto key ``app.users.get_user:user_id=42``);
- leases and locks ``{<store key>}:lease`` or ``{<tag>}:lease:<store key>``;
- tag tokens ``{<ns>:v<version>:}tags:<tag>``.

Every other key is *foreign* and grouped by an inferred pattern: each ``:``-separated
segment has its numbers, UUIDs, hex ids and long opaque tokens replaced by ``{id}``, then
any position where more than :data:`MAX_LITERALS` different literals follow the same
prefix is collapsed to ``{id}`` too (``session:Zk3v...`` for ten thousand sessions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_LITERALS",
    "PLACEHOLDER",
    "KeyShape",
    "collapse",
    "family",
    "infer_patterns",
    "mask_segment",
    "shape",
]

PLACEHOLDER = "{id}"
#: More distinct literals than this at one position after one prefix are taken for ids.
MAX_LITERALS = 32

_NAME = r"[A-Za-z0-9_.-]+"
_TAGS = re.compile(rf"\{{({_NAME}):v({_NAME}):\}}tags:")
# {<ns>:v<version>:<caller key>}:lease  (a store key without a hash tag, wrapped whole)
_WRAPPED = re.compile(rf"\{{({_NAME}):v({_NAME}):[^}}]+\}}:(lease|lock)\Z")
# {<tag>}:lease:<ns>:v<version>:...     (a store key with a hash tag: the tag in front)
_TAGGED = re.compile(rf"\{{[^}}]+\}}:(lease|lock):({_NAME}):v({_NAME}):")
_VALUE = re.compile(rf"({_NAME}):v({_NAME}):(.+)", re.DOTALL)

_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_HEX = re.compile(r"(?<![A-Za-z0-9])(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,}(?![A-Za-z0-9])")
_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])"
                    r"[A-Za-z0-9_-]{16,}(?![A-Za-z0-9])")  # fmt: skip
_DIGITS = re.compile(r"(?<![A-Za-z{])\d+")


@dataclass(frozen=True)
class KeyShape:
    """What a key is, from its name alone.

    Attributes:
        kind: ``"value"``, ``"lease"``, ``"lock"``, ``"tags"`` (cachelayer's) or
            ``"foreign"``.
        namespace: the Cache namespace (``""`` for foreign keys).
        version: the Cache version (``""`` for foreign keys).
        rest: the caller key of a value; the whole key of a foreign key; ``""`` else.
    """

    kind: str
    namespace: str = ""
    version: str = ""
    rest: str = ""


def shape(key: str) -> KeyShape:
    """Classify ``key`` by the layout of docs/keys.md (a value's envelope is checked apart)."""
    if key.startswith("{"):
        m = _TAGS.match(key)
        if m:
            return KeyShape("tags", m.group(1), m.group(2))
        m = _WRAPPED.match(key)
        if m:
            return KeyShape(m.group(3), m.group(1), m.group(2))
        m = _TAGGED.match(key)
        if m:
            return KeyShape(m.group(1), m.group(2), m.group(3))
        return KeyShape("foreign", rest=key)
    m = _VALUE.match(key)
    if m:
        return KeyShape("value", m.group(1), m.group(2), m.group(3))
    return KeyShape("foreign", rest=key)


def mask_segment(segment: str) -> str:
    """One ``:``-separated segment with its ids replaced by ``{id}``.

    A cachelayer-rendered argument (``!``- or ``%``-escaped, or ``name=value`` of an auto
    key) is an id as a whole; otherwise UUIDs, hex runs of 8+ with a digit, opaque tokens
    of 16+ letters and digits, and numbers not glued to a letter (``v2`` stays) are.
    """
    if segment[:1] in ("!", "%") or "=" in segment:
        return PLACEHOLDER
    out = _UUID.sub(PLACEHOLDER, segment)
    out = _HEX.sub(PLACEHOLDER, out)
    out = _TOKEN.sub(PLACEHOLDER, out)
    return _DIGITS.sub(PLACEHOLDER, out)


def collapse(paths: Sequence[Sequence[str]], limit: int = MAX_LITERALS) -> list[tuple[str, ...]]:
    """Collapse positions with more than ``limit`` distinct segments after one prefix.

    Returns one collapsed path per input path, in order.
    """
    out: list[list[str]] = [list(p) for p in paths]
    _collapse_into(out, list(range(len(out))), 0, limit)
    return [tuple(p) for p in out]


def _collapse_into(out: list[list[str]], rows: list[int], depth: int, limit: int) -> None:
    # Iterative over depth per branch would need a stack; the depth is the number of
    # segments of a key, which is small.
    by_segment: dict[str, list[int]] = {}
    for row in rows:
        if depth < len(out[row]):
            by_segment.setdefault(out[row][depth], []).append(row)
    if len(by_segment) > limit:
        merged = [row for branch in by_segment.values() for row in branch]
        for row in merged:
            out[row][depth] = PLACEHOLDER
        by_segment = {PLACEHOLDER: merged}
    for branch in by_segment.values():
        _collapse_into(out, branch, depth + 1, limit)


def infer_patterns(keys: Iterable[str], limit: int = MAX_LITERALS) -> list[str]:
    """The pattern of each key (``session:{id}``), in order."""
    paths = [[mask_segment(s) for s in key.split(":")] for key in keys]
    return [":".join(p) for p in collapse(paths, limit)]


def family(pattern: str) -> str:
    """A caller key's family: its pattern up to the first ``{id}``.

    ``user:{id}`` → ``user:``; ``app.users.get_user:{id}`` → ``app.users.get_user:``;
    ``report:{id}:summary`` → ``report:``; a key with no id is its own family.
    """
    index = pattern.find(PLACEHOLDER)
    if index == -1:
        return pattern
    cut = pattern.rfind(":", 0, index)
    return pattern[: cut + 1] if cut != -1 else pattern[:index] + PLACEHOLDER
