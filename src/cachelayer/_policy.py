"""TTL policy: seconds or named volatility classes, with jitter against avalanches."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Mapping

from .errors import ConfigurationError

__all__ = ["DEFAULT", "TtlPolicy", "TtlSpec"]


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


#: "Use the Cache's default TTL" (distinct from ``None``, which means "never expires").
DEFAULT = _Default.DEFAULT

TtlSpec = float | int | str | None | _Default


class TtlPolicy:
    """Turns a TTL spec into the seconds to store an entry for.

    Args:
        default: the TTL used when a call gives none; seconds, a class name or ``None``.
        classes: named TTLs (``{"profile": 3600, "leaderboard": 60}``).
        jitter: each TTL is multiplied by a uniform factor in ``[1 - jitter, 1 + jitter]``
            so keys written together do not expire together; 0 turns it off.
        rng: returns floats in ``[0, 1)``; injected by tests.
    """

    def __init__(
        self,
        default: TtlSpec = 300,
        classes: Mapping[str, float] | None = None,
        jitter: float = 0.1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ConfigurationError(f"jitter={jitter!r} must be >= 0 and < 1")
        self.classes = dict(classes or {})
        for name, seconds in self.classes.items():
            self._seconds(seconds, f"ttls[{name!r}]")
        self.jitter = jitter
        self._rng = rng
        if default is DEFAULT:
            raise ConfigurationError("the default TTL cannot itself be DEFAULT")
        self.default = default
        self.check(default)

    @staticmethod
    def _seconds(ttl: object, what: str) -> float:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise ConfigurationError(f"{what}={ttl!r} must be a number of seconds")
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ConfigurationError(f"{what}={ttl!r} must be a finite number of seconds > 0")
        return float(ttl)

    def check(self, ttl: TtlSpec) -> float | None:
        """Validate a spec and return its base seconds (no jitter), ``None`` = no expiry.

        Raises:
            ConfigurationError: not a positive number, ``None``, ``DEFAULT`` or a known class.
        """
        if ttl is DEFAULT:
            ttl = self.default
        if ttl is None:
            return None
        if isinstance(ttl, str):
            if ttl not in self.classes:
                known = ", ".join(sorted(self.classes)) or "none configured"
                raise ConfigurationError(f"unknown TTL class {ttl!r} (known: {known})")
            return self.classes[ttl]
        return self._seconds(ttl, "ttl")

    def resolve(self, ttl: TtlSpec) -> float | None:
        """The jittered seconds for one write."""
        seconds = self.check(ttl)
        if seconds is None or not self.jitter:
            return seconds
        return seconds * (1.0 + self.jitter * (2.0 * self._rng() - 1.0))

    def at_most(self, seconds: float | None) -> float | None:
        """Jittered seconds for a TTL that must not be exceeded (a loader's own
        :class:`~cachelayer.Fresh` TTL): the jitter only ever shortens it."""
        if seconds is None or not self.jitter:
            return seconds
        return seconds * (1.0 - self.jitter * self._rng())
