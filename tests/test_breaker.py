"""The circuit breaker's states, driven by an injected clock."""

from __future__ import annotations

import pytest

from cachelayer import CircuitBreaker
from tests.conftest import FakeClock


def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    """Failures below the threshold keep it closed; reaching it opens it."""
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    assert breaker.failure() is False
    assert breaker.failure() is False
    assert breaker.allow() is True
    assert breaker.failure() is True
    assert breaker.state == "open"
    assert breaker.allow() is False


def test_success_resets_the_count(clock: FakeClock) -> None:
    """Only consecutive failures count: a success in between starts over."""
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=clock)
    breaker.failure()
    breaker.success()
    assert breaker.failure() is False
    assert breaker.state == "closed"


def test_half_open_lets_exactly_one_probe_through(clock: FakeClock) -> None:
    """After the cooldown one caller probes; the others keep short-circuiting."""
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    breaker.failure()
    clock.advance(10)
    assert breaker.state == "half-open"
    assert breaker.allow() is True
    assert breaker.allow() is False
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow() is True


def test_failed_probe_reopens_for_a_full_cooldown(clock: FakeClock) -> None:
    """A failing probe opens the breaker again for another cooldown."""
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    breaker.failure()
    clock.advance(10)
    assert breaker.allow() is True
    assert breaker.failure() is True
    clock.advance(9.9)
    assert breaker.allow() is False
    clock.advance(0.2)
    assert breaker.allow() is True
    assert breaker.opened == 2


def test_lost_probe_does_not_stick(clock: FakeClock) -> None:
    """A probe that never reports back is given up after one cooldown."""
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    breaker.failure()
    clock.advance(10)
    assert breaker.allow() is True  # this probe is then lost (task cancelled, say)
    clock.advance(5)
    assert breaker.allow() is False
    clock.advance(5.1)
    assert breaker.allow() is True


def test_threshold_zero_disables(clock: FakeClock) -> None:
    """threshold=0 never opens."""
    breaker = CircuitBreaker(threshold=0, clock=clock)
    for _ in range(100):
        breaker.failure()
    assert breaker.allow() is True


def test_rejects_negative_settings() -> None:
    """Negative threshold or cooldown is an error."""
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(threshold=-1)


def test_failures_of_one_incident_count_once() -> None:
    """Calls that were in flight together when the store failed count as one failure:
    a hundred callers timing out on one stall do not open the breaker by themselves."""
    breaker = CircuitBreaker(threshold=3, cooldown=5.0, clock=FakeClock())
    started = breaker.epoch  # a hundred calls start...
    opened = [breaker.failure(started) for _ in range(100)]  # ...and fail together
    assert opened == [False] * 100
    assert breaker.state == "closed"
    # Calls made after each failure fail too: a server that keeps failing opens it.
    assert breaker.failure(breaker.epoch) is False
    assert breaker.failure(breaker.epoch) is True
    assert breaker.state == "open"
