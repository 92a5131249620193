"""The event format, signing and the checks a reader makes (docs/events.md), without I/O."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from cachelayer.errors import ConfigurationError
from cachelayer.events import (
    MAX_ITEMS,
    MAX_PAYLOAD_BYTES,
    Event,
    Refused,
    Signer,
    Verifier,
    check,
    make_event,
    parse,
    sign_event,
)

NOW = 1_700_000_000_000
WINDOW = 300_000
DOC_SECRET = b"0123456789abcdef0123456789abcdef"
DOC_PAYLOAD = (
    b'{"v":1,"id":"6f1c0a5e2b3d4c8f9a7e1d2c3b4a5f60","ns":"shop","keys":["user:42"],'
    b'"tags":["team:7"],"origin":"billing-api","ts":1700000000000}'
)
DOC_SIGNATURE = "f42cfe0d315afff48522d22a36e8f2be49af7f7f7e47499a4c15cfb767a7f037"


def signed(body: dict[str, object] | bytes, secret: bytes = DOC_SECRET) -> tuple[bytes, str]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return payload, hmac.new(secret, payload, hashlib.sha256).hexdigest()


def body(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "v": 1,
        "id": "e1",
        "ns": "shop",
        "keys": ["user:42"],
        "tags": [],
        "origin": "",
        "ts": NOW,
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not ...}


def reason(payload: bytes, signature: str, kid: str = "k1", now: int = NOW) -> str:
    verifier = Verifier({"k1": DOC_SECRET})
    with pytest.raises(Refused) as refused:
        check(payload, kid, signature, verifier, "shop", now, WINDOW)
    return refused.value.reason


def test_the_worked_example_of_the_docs() -> None:
    """The payload bytes and signature docs/events.md shows are what the code makes."""
    event = make_event(
        "shop",
        ["user:42"],
        ["team:7"],
        ts=1_700_000_000_000,
        origin="billing-api",
        event_id="6f1c0a5e2b3d4c8f9a7e1d2c3b4a5f60",
    )
    result = sign_event(event, Signer("k1", DOC_SECRET))
    assert result.payload == DOC_PAYLOAD
    assert result.signature == DOC_SIGNATURE
    assert result.stream_fields() == {"p": DOC_PAYLOAD, "k": "k1", "s": DOC_SIGNATURE}
    assert result.http_headers()["Cachelayer-Signature"] == DOC_SIGNATURE
    verifier = Verifier({"k1": DOC_SECRET})
    assert check(DOC_PAYLOAD, "k1", DOC_SIGNATURE, verifier, "shop", NOW, WINDOW) == event


def test_round_trip_keeps_any_string() -> None:
    """Keys and tags with quotes, non-ASCII and lone surrogates come back unchanged."""
    keys = ("a", 'quote"d', "caf\u00e9", "\ud800", "{tag}:x", "\x00")
    event = Event(id="x", ns="n", keys=keys, tags=("t\u2603",), origin="o", ts=1)
    payload = sign_event(event, Signer("k", DOC_SECRET)).payload
    assert payload.isascii()
    assert parse(payload) == event


def test_rotation_accepts_every_key_the_verifier_holds() -> None:
    """Events signed with the old key and with the new one both verify; others do not."""
    old, new = Signer("old", b"o" * 32), Signer("new", b"n" * 32)
    verifier = Verifier({"old": b"o" * 32, "new": b"n" * 32})
    for signer in (old, new):
        s = sign_event(make_event("shop", ["k"], ts=NOW), signer)
        assert check(s.payload, s.kid, s.signature, verifier, "shop", NOW, WINDOW).keys == ("k",)
    s = sign_event(make_event("shop", ["k"], ts=NOW), Signer("gone", b"g" * 32))
    with pytest.raises(Refused, match="unknown_kid"):
        check(s.payload, s.kid, s.signature, verifier, "shop", NOW, WINDOW)


@pytest.mark.parametrize("secret", [b"", b"x" * 31, "y" * 31])
def test_short_secrets_are_refused(secret: bytes | str) -> None:
    """A secret under 32 bytes is a ConfigurationError, for signers and verifiers."""
    with pytest.raises(ConfigurationError, match="at least 32"):
        Signer("k", secret)
    with pytest.raises(ConfigurationError, match="at least 32"):
        Verifier({"k": secret})


@pytest.mark.parametrize("kid", ["", "a b", "k" * 65, "k\u00e9"])
def test_bad_key_ids_are_refused(kid: str) -> None:
    """Key ids are 1-64 characters of [A-Za-z0-9_.-]."""
    with pytest.raises(ConfigurationError, match="key id"):
        Signer(kid, DOC_SECRET)


def test_secrets_never_show_in_reprs() -> None:
    """repr of a Signer or Verifier names key ids only."""
    assert "0123" not in repr(Signer("k1", DOC_SECRET)) + repr(Verifier({"k1": DOC_SECRET}))


def test_limits_on_writing() -> None:
    """Writers refuse an empty event, more than MAX_ITEMS names, a payload over the
    limit, a str where a list is due and non-str names."""
    signer = Signer("k", DOC_SECRET)
    assert sign_event(make_event("n", ["k"] * 600, ["t"] * 400, ts=NOW), signer)
    with pytest.raises(ValueError, match="at least one"):
        sign_event(make_event("n", ts=NOW), signer)
    with pytest.raises(ValueError, match="at most 1000"):
        sign_event(make_event("n", ["k"] * (MAX_ITEMS + 1), ts=NOW), signer)
    with pytest.raises(ValueError, match="over 65536"):
        sign_event(make_event("n", ["k" * 70_000], ts=NOW), signer)
    with pytest.raises(TypeError, match="not one str"):
        make_event("n", "user:42", ts=NOW)
    with pytest.raises(TypeError, match="holds a int"):
        sign_event(make_event("n", [42], ts=NOW), signer)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty"):
        sign_event(make_event("n", [""], ts=NOW), signer)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (body(ns="other"), "namespace"),
        (body(ts=NOW - WINDOW - 1), "expired"),
        (body(ts=NOW + WINDOW + 1), "expired"),
        (body(v=2), "version"),
        (body(v=True), "malformed"),
        (body(v="1"), "malformed"),
        (body(ts=float(NOW)), "malformed"),
        (body(ts=2**53), "malformed"),
        (body(ts=-1), "malformed"),
        (body(keys=[], tags=[]), "malformed"),
        (body(keys="user:42"), "malformed"),
        (body(keys=[1]), "malformed"),
        (body(keys=[""]), "malformed"),
        (body(keys=["k"] * (MAX_ITEMS + 1)), "malformed"),
        (body(id="has space"), "malformed"),
        (body(id="x" * 65), "malformed"),
        (body(id=...), "malformed"),
        (body(origin="o" * 257), "malformed"),
        (body(ns="a:b"), "malformed"),
        ([body()], "malformed"),
        (
            b'{"v":1,"v":1,"id":"e1","ns":"shop","keys":["k"],"tags":[],"origin":"","ts":1}',
            "malformed",
        ),
        (
            b'{"v":1,"id":"e1","ns":"shop","keys":["k"],"tags":[],"origin":"","ts":NaN}',
            "malformed",
        ),
        (b"\xff\xfe{}", "malformed"),
        (b"[" * 50_000, "malformed"),
        (b"{}" + b" " * MAX_PAYLOAD_BYTES, "oversized"),
    ],
)
def test_refusals(payload: object, expected: str) -> None:
    """Each broken rule is refused with its reason, even when the signature is good."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    assert reason(*signed(raw)) == expected


def test_the_signature_is_checked_first() -> None:
    """A payload nobody keyed is never parsed: bad signature, unknown kid, malformed
    transport fields, in that order."""
    payload, good = signed(body(ns="other"))
    assert reason(payload, "0" * 64) == "bad_signature"
    assert reason(payload, good.upper()) == "bad_signature"
    assert reason(payload, good[:-1]) == "bad_signature"
    assert reason(payload, good, kid="k9") == "unknown_kid"
    assert reason(payload + b" ", good) == "bad_signature"
    verifier = Verifier({"k1": DOC_SECRET})
    for fields in [(None, "k1", good), (payload, None, good), (payload, "k1", 5)]:
        with pytest.raises(Refused, match="malformed"):
            check(*fields, verifier, "shop", NOW, WINDOW)


def test_unknown_members_are_ignored() -> None:
    """A member a reader does not know is ignored (additions within version 1)."""
    payload, signature = signed(body(extra={"a": 1}))
    event = check(payload, "k1", signature, Verifier({"k1": DOC_SECRET}), "shop", NOW, WINDOW)
    assert event.keys == ("user:42",)
