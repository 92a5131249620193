"""Tag and key templates of ``invalidate_on``, formatted with a model instance.

A target is a template (``"user:{user_id}"``, formatted with ``str.format_map`` over the
instance's attributes) or a callable ``instance -> iterable of str``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.db.models import Model

__all__ = ["Target", "check_targets", "render", "render_old", "template_roots"]

#: A tag or key: a template formatted with the instance's attributes, or a callable.
Target = str | Callable[[Any], Iterable[str]]

_ROOT = re.compile(r"[.\[]")


def template_roots(template: str) -> list[str]:
    """The attribute names a template starts its fields with (``"{user.pk}"``: ``user``).

    Raises:
        ValueError: the template does not parse, or has a positional field (``{}``).
    """
    roots = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r} does not parse: {exc}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = _ROOT.split(field, maxsplit=1)[0]
        if not root.isidentifier():
            raise ValueError(
                f"template {template!r}: {{{field}}} must start with an attribute name"
            )
        roots.append(root)
    return roots


class _Attributes(Mapping[str, Any]):
    """The instance's attributes as the mapping ``str.format_map`` reads."""

    def __init__(self, instance: Model) -> None:
        self._instance = instance

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self._instance, name)
        except AttributeError:
            raise KeyError(name) from None

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


def check_targets(targets: Iterable[Target], what: str) -> tuple[Target, ...]:
    if isinstance(targets, str):
        raise TypeError(f"invalidate_on({what}=...) takes a list of templates, not one string")
    checked = tuple(targets)
    for target in checked:
        if isinstance(target, str):
            template_roots(target)  # raises ValueError for a template that does not parse
        elif not callable(target):
            raise TypeError(
                f"invalidate_on({what}=...): {target!r} is neither a template nor a callable"
            )
    return checked


def render(targets: tuple[Target, ...], instance: Model) -> list[str]:
    out: list[str] = []
    for target in targets:
        if isinstance(target, str):
            try:
                out.append(target.format_map(_Attributes(instance)))
            except (KeyError, AttributeError, IndexError) as exc:
                raise ValueError(
                    f"invalidate_on({instance._meta.label}): template {target!r} does not "
                    f"format with {instance!r} ({type(exc).__name__}: {exc})"
                ) from exc
            continue
        made = target(instance)
        if isinstance(made, str):
            raise TypeError(
                f"invalidate_on: {target!r} returned the str {made!r}; return a list of str"
            )
        out += made
    return out


def render_old(targets: tuple[Target, ...], old: dict[str, Any]) -> list[str]:
    """Templates whose every field was remembered, formatted with the remembered values."""
    out = []
    for target in targets:
        if isinstance(target, str) and all(r in old for r in template_roots(target)):
            out.append(target.format_map(old))
    return out
