"""Hostile events: whatever lands in the stream, nothing is applied unless it is a fresh,
genuine event of the consumer's namespace, and nothing raises or leaks into the logs."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachelayer import Cache
from cachelayer.events import (
    MAX_ITEMS,
    Event,
    Refused,
    Signer,
    StreamConsumer,
    Verifier,
    check,
    make_event,
    publish_invalidation,
    sign_event,
)

from .conftest import SECRET

CacheFactory = Callable[..., Cache]
ConsumerFactory = Callable[..., StreamConsumer]
SENTINEL = "victim:1"
HOSTILE = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def target(
    events_cache: CacheFactory, consumers: ConsumerFactory, verifier: Verifier
) -> tuple[Cache, StreamConsumer]:
    """A Cache holding a sentinel entry and tag, and a consumer with its group made."""
    cache = events_cache()
    cache.set(SENTINEL, "alive")
    consumer = consumers(cache, verifier)
    consumer.poll()
    return cache, consumer


def assert_untouched(cache: Cache, consumer: StreamConsumer) -> None:
    assert consumer.counters.applied == 0
    assert cache.get(SENTINEL) == "alive"
    assert consumer.lag().pending == 0  # refused entries are acknowledged, not left


TOO_MANY = [SENTINEL] * (MAX_ITEMS + 1)


def now_ms() -> int:
    return int(time.time() * 1000)


LATER = now_ms() + 10**6  # far past the window, from the future


def genuine(namespace: str, **changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "v": 1,
        "id": uuid.uuid4().hex,
        "ns": namespace,
        "keys": [SENTINEL],
        "tags": [],
        "origin": "test",
        "ts": int(time.time() * 1000),
    }
    fields.update(changes)
    return fields


def add(consumer: StreamConsumer, fields: dict[bytes | str, bytes | str]) -> None:
    consumer._sync_client().xadd(consumer.stream, fields)


def signed_fields(
    payload: bytes, secret: bytes = SECRET, kid: str = "k2"
) -> dict[bytes | str, bytes | str]:
    import hashlib
    import hmac

    return {"p": payload, "k": kid, "s": hmac.new(secret, payload, hashlib.sha256).hexdigest()}


field_values = st.one_of(st.binary(max_size=200), st.text(max_size=50))
field_names = st.sampled_from([b"p", b"k", b"s", b"x", b""])


@HOSTILE
@given(fields=st.dictionaries(field_names, field_values, min_size=1, max_size=5))
def test_random_entries_apply_nothing(
    target: tuple[Cache, StreamConsumer], fields: dict[bytes | str, bytes | str]
) -> None:
    """Random fields, values and signatures: refused, acknowledged, nothing applied."""
    cache, consumer = target
    add(consumer, fields)
    assert consumer.poll() == 1
    assert_untouched(cache, consumer)


@HOSTILE
@given(data=st.data())
def test_mutated_genuine_events_apply_nothing(
    target: tuple[Cache, StreamConsumer], data: st.DataObject
) -> None:
    """A genuine entry with its payload, signature or kid mutated (a byte flipped, cut,
    extended) is refused."""
    cache, consumer = target
    payload = json.dumps(genuine(consumer.namespace)).encode()
    fields = signed_fields(payload)
    name = data.draw(st.sampled_from(["p", "s", "k"]))
    value = fields[name]
    raw = value if isinstance(value, bytes) else value.encode()
    how = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        bit = data.draw(st.integers(0, 7))
        raw = raw[:at] + bytes([raw[at] ^ (1 << bit)]) + raw[at + 1 :]
    elif how == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw = raw + data.draw(st.binary(min_size=1, max_size=8))
    fields[name] = raw
    add(consumer, fields)
    consumer.poll()
    assert_untouched(cache, consumer)


@settings(max_examples=500, deadline=None)
@given(
    payload=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
    kid=st.one_of(st.text(max_size=10), st.binary(max_size=10), st.none(), st.integers()),
    signature=st.one_of(st.text(max_size=70), st.binary(max_size=70), st.none()),
)
def test_check_only_ever_refuses_random_input(
    payload: bytes, kid: object, signature: object
) -> None:
    """check() on anything: a Refused, never another exception (no I/O; many examples)."""
    with pytest.raises(Refused):
        check(payload, kid, signature, Verifier({"k2": SECRET}), "shop", 0, 300_000)


@HOSTILE
@given(
    body=st.dictionaries(
        st.sampled_from(["v", "id", "ns", "keys", "tags", "origin", "ts", "zz"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
            st.lists(st.one_of(st.text(max_size=10), st.integers()), max_size=3),
        ),
    )
)  # fmt: skip
def test_signed_garbage_applies_nothing(
    target: tuple[Cache, StreamConsumer], body: dict[str, object]
) -> None:
    """Correctly signed payloads whose members are random (a buggy or hostile holder of
    the key) apply nothing unless they are a complete, valid event -- which random
    members never are for the sentinel key."""
    cache, consumer = target
    add(consumer, signed_fields(json.dumps(body).encode()))
    consumer.poll()
    assert_untouched(cache, consumer)


def refusal_of(consumer: StreamConsumer) -> dict[str, int]:
    return {k: v for k, v in consumer.counters.refused.items() if v}


@pytest.mark.parametrize(
    ("make_fields", "reason"),
    [
        (lambda ns: signed_fields(json.dumps(genuine(ns)).encode(), b"f" * 32), "bad_signature"),
        (lambda ns: signed_fields(json.dumps(genuine(ns)).encode(), kid="k7"), "unknown_kid"),
        (lambda ns: signed_fields(json.dumps(genuine("other")).encode()), "namespace"),
        (lambda ns: signed_fields(json.dumps(genuine(ns, ts=1)).encode()), "expired"),
        (lambda ns: signed_fields(json.dumps(genuine(ns, ts=LATER)).encode()), "expired"),
        (lambda ns: signed_fields(json.dumps(genuine(ns, v=2)).encode()), "version"),
        (lambda ns: signed_fields(json.dumps(genuine(ns, keys=TOO_MANY)).encode()), "malformed"),
        (
            lambda ns: signed_fields(json.dumps(genuine(ns, origin="x" * 70_000)).encode()),
            "oversized",
        ),
        (lambda ns: {"p": json.dumps(genuine(ns)).encode(), "k": "k2"}, "malformed"),
        (lambda ns: {"k": "k2", "s": "0" * 64}, "malformed"),
    ],
    ids=[
        "forged", "unknown-kid", "wrong-namespace", "expired", "future", "version-2",
        "too-many-keys", "oversized", "unsigned", "no-payload",
    ],
)  # fmt: skip
def test_hand_written_hostile_events(
    target: tuple[Cache, StreamConsumer],
    make_fields: Callable[[str], dict[bytes | str, bytes | str]],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each hostile event is refused with its reason, acknowledged, logged without any of
    its content."""
    cache, consumer = target
    caplog.set_level(logging.DEBUG, logger="cachelayer")
    add(consumer, make_fields(consumer.namespace))
    assert consumer.poll() == 1
    assert_untouched(cache, consumer)
    assert refusal_of(consumer) == {reason: 1}
    assert caplog.records, "a refusal is logged"
    for record in caplog.records:
        assert SENTINEL not in record.getMessage()


def test_a_replayed_event_is_refused_within_the_window(
    target: tuple[Cache, StreamConsumer], signer: Signer
) -> None:
    """The exact entry of an applied event added again (an attacker with write access to
    the stream, or a retrying publisher) is not applied twice within the window."""
    cache, consumer = target
    entry = sign_event(
        make_event(consumer.namespace, [SENTINEL], ts=int(time.time() * 1000)), signer
    )
    add(consumer, entry.stream_fields())  # type: ignore[arg-type]
    consumer.poll()
    assert cache.get(SENTINEL) is None
    cache.set(SENTINEL, "alive again")
    add(consumer, entry.stream_fields())  # type: ignore[arg-type]
    consumer.poll()
    assert cache.get(SENTINEL) == "alive again"
    assert refusal_of(consumer) == {"replayed": 1}


def test_a_replay_after_the_window_is_refused_as_expired(
    target: tuple[Cache, StreamConsumer], signer: Signer
) -> None:
    """After the window the mark is gone (none here), but the timestamp check refuses it."""
    cache, consumer = target
    published = time.time()
    entry = sign_event(
        make_event(consumer.namespace, [SENTINEL], ts=int(published * 1000)), signer
    )
    consumer.clock = lambda: published + consumer.window + 1
    add(consumer, entry.stream_fields())  # type: ignore[arg-type]
    consumer.poll()
    assert_untouched(cache, consumer)
    assert refusal_of(consumer) == {"expired": 1}


def test_a_valid_event_for_the_namespace_still_applies(
    target: tuple[Cache, StreamConsumer], signer: Signer
) -> None:
    """The control: after the hostile ones, a genuine event applies."""
    cache, consumer = target
    publish_invalidation(cache, keys=[SENTINEL], signer=signer)
    consumer.poll(1.0)
    assert cache.get(SENTINEL) is None
    assert consumer.counters.applied == 1


def test_event_ids_cannot_reach_other_keys() -> None:
    """Ids are [A-Za-z0-9_.-]{1,64}: the mark key built from one stays in its slot."""
    with pytest.raises(ValueError, match="event id"):
        sign_event(Event("a}b", "n", ("k",), (), "", 1), Signer("k", SECRET))
