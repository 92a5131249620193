"""Hooks an integration sets to see inside the read path; all off (None) by default.

The read path checks each hook with one module attribute read, and does nothing more
when it is None: an exporter that is not installed costs nothing.

``load_span(function, namespace)``: a context manager entered around every load (a miss's
and a background refresh's), in the caller's thread or task, so what the loader does
runs inside it; an exception the loader raised passes through its ``__exit__``.
``function`` is the decorated function's ``module.qualname``, ``""`` for direct calls
(``get_or_load``). :func:`cachelayer.otel.instrument` sets it to open a span.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

__all__ = ["LoadSpan", "load_span"]

#: What ``load_span`` is: ``(function, namespace) -> context manager``.
LoadSpan = Callable[[str, str], AbstractContextManager[object]]

load_span: LoadSpan | None = None
