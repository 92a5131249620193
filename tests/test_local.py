"""The local tier's data structure (no I/O): bounds, S3-FIFO admission, tags, the
invalidation sequence that refuses a racing reader's insert, and the max_ttl backstop."""

from __future__ import annotations

import random
import time

import pytest

from cachelayer import ConfigurationError, LocalTier
from cachelayer._local import MISSING, RECENT, SLOT_OVERHEAD, S3Fifo, _Slot
from cachelayer._purge import EVERYTHING, KEYS, TAGS, apply, channel_for, message, parse


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


NOW_MS = 1_700_000_000_000


def tier(clock: FakeClock | None = None, **kw: object) -> LocalTier:
    t = LocalTier(clock=clock or FakeClock(), **kw)  # type: ignore[arg-type]
    t.enable()
    return t


def keep(t: LocalTier, key: str, value: object = "v", *, since: int | None = None, **kw: object):
    args = {"fresh_until_ms": 0, "now_ms": NOW_MS, "size": 10, "tags": ()}
    args.update(kw)
    return t.keep(key, value, since=t.seq if since is None else since, **args)  # type: ignore[arg-type]


def test_keep_then_get_returns_the_same_object() -> None:
    """A kept value is returned as is (the same object) until it is dropped."""
    t = tier()
    value = {"a": [1]}
    assert keep(t, "k", value)
    assert t.get("k") is value
    assert t.get("other") is MISSING


def test_disabled_tier_keeps_nothing() -> None:
    """Before the channel is subscribed (and after it is lost) nothing is kept."""
    t = LocalTier(clock=FakeClock())
    assert not keep(t, "k")
    assert t.get("k") is MISSING
    t.enable()
    assert keep(t, "k")
    t.disable()
    assert t.get("k") is MISSING
    assert len(t) == 0
    assert not keep(t, "k")


def test_enabling_refuses_reads_begun_before() -> None:
    """A read begun while the channel was down may predate a lost purge: refused."""
    t = LocalTier(clock=FakeClock())
    since = t.seq
    t.enable()
    assert not keep(t, "k", since=since)
    assert keep(t, "k")


def test_max_ttl_is_a_backstop() -> None:
    """An entry is served at most max_ttl seconds, whatever its own freshness."""
    clock = FakeClock()
    t = tier(clock, max_ttl=5)
    keep(t, "k")
    clock.now += 4.9
    assert t.get("k") == "v"
    clock.now += 0.2
    assert t.get("k") is MISSING
    assert len(t) == 0


def test_entry_freshness_caps_local_life() -> None:
    """An entry is never served locally past its own fresh_until."""
    clock = FakeClock()
    t = tier(clock, max_ttl=30)
    keep(t, "k", fresh_until_ms=NOW_MS + 2000)
    clock.now += 1.9
    assert t.get("k") == "v"
    clock.now += 0.2
    assert t.get("k") is MISSING
    assert not keep(t, "expired", fresh_until_ms=NOW_MS - 1)


def test_invalidation_during_a_read_wins() -> None:
    """A value read before an invalidation of its key is not kept; other keys are."""
    t = tier()
    since = t.seq
    t.invalidate(keys=["k"])
    assert not keep(t, "k", since=since)
    assert keep(t, "j", since=since)
    assert t.refused == 1


def test_tag_invalidation_drops_and_refuses_by_tag() -> None:
    """A tag purge drops every entry carrying the tag, and refuses racing inserts."""
    t = tier()
    keep(t, "a", tags=["T1", "T2"])
    keep(t, "b", tags=["T2"])
    keep(t, "c", tags=["T3"])
    since = t.seq
    t.invalidate(tags=["T2"])
    assert t.get("a") is MISSING
    assert t.get("b") is MISSING
    assert t.get("c") == "v"
    assert not keep(t, "d", since=since, tags=["T2"])
    assert keep(t, "d", since=since, tags=["T3"])
    # the tag index forgets dropped entries
    t.invalidate(keys=["c"])
    t.invalidate(tags=["T3"])
    assert t.get("d") is MISSING


def test_forgotten_invalidations_refuse_old_readers() -> None:
    """Past RECENT remembered names, a reader older than the forgotten ones is refused."""
    t = tier()
    since = t.seq
    t.invalidate(keys=[f"k{i}" for i in range(RECENT + 1)])
    assert not keep(t, "unrelated", since=since)
    assert keep(t, "unrelated")


def test_flush_drops_everything_and_refuses_older_reads() -> None:
    """flush (a clear, an unreadable purge) empties the tier."""
    t = tier()
    keep(t, "a", tags=["T"])
    since = t.seq
    t.flush()
    assert len(t) == 0
    assert t.bytes_used == 0
    assert not keep(t, "a", since=since)


def test_bounded_by_entries_and_bytes() -> None:
    """Neither max_entries nor max_bytes is ever exceeded; an entry too large is refused."""
    t = tier(max_entries=50, max_bytes=60 * (SLOT_OVERHEAD + 100))
    for i in range(1000):
        keep(t, f"k{i:03d}", size=random.Random(i).randrange(1, 200))
        assert len(t) <= 50
        assert t.bytes_used <= 60 * (SLOT_OVERHEAD + 100)
    assert t.evictions > 0
    assert not keep(t, "huge", size=10**6)
    assert t.get("huge") is MISSING


def test_replacing_a_key_keeps_the_accounting() -> None:
    """Keeping a key again replaces it: one entry, its new size counted once."""
    t = tier()
    keep(t, "k", "old", size=10)
    keep(t, "k", "new", size=30)
    assert len(t) == 1
    assert t.get("k") == "new"
    assert t.bytes_used == 30 + 1 + SLOT_OVERHEAD


def test_s3fifo_keeps_hot_keys_through_a_scan() -> None:
    """One-hit wonders (a scan) pass through the small queue without evicting hot keys."""
    fifo = S3Fifo(100, 10**9)
    hot = [f"hot{i}" for i in range(50)]
    for _ in range(3):
        for key in hot:
            if fifo.get(key) is None:
                fifo.put(_Slot(key, key, 1e18, 1, ()))
    for i in range(10_000):
        fifo.put(_Slot(f"scan{i}", i, 1e18, 1, ()))
        for key in hot[:5]:
            fifo.get(key)
    assert sum(fifo.get(key) is not None for key in hot) >= 45
    assert len(fifo.data) <= 100


def test_s3fifo_ghost_admits_a_returning_key_to_main() -> None:
    """A key evicted from the small queue and seen again goes straight to main."""
    fifo = S3Fifo(10, 10**9)
    for i in range(12):
        fifo.put(_Slot(f"k{i}", i, 1e18, 1, ()))
    assert "k0" not in fifo.data
    fifo.put(_Slot("k0", 0, 1e18, 1, ()))
    assert fifo.data["k0"].main


def test_settings_are_checked() -> None:
    """Bad settings raise ConfigurationError, naming what is wrong."""
    with pytest.raises(ConfigurationError, match="max_ttl"):
        LocalTier(max_ttl=0)
    with pytest.raises(ConfigurationError, match="max_entries"):
        LocalTier(max_entries=0)
    with pytest.raises(ConfigurationError, match="unknown local tier setting"):
        LocalTier.from_option({"max_size": 1})
    assert LocalTier.from_option({"max_entries": 5}).max_ttl == 30.0


def test_purge_messages_round_trip() -> None:
    """Keys with any characters travel intact; garbage reads as 'purge everything'."""
    keys = ["ns:v1:a\nb", "ns:v1:\ud800", "ns:v1:\x00"]
    before = int(time.time() * 1000)
    kind, names, origin, sent = parse(message(KEYS, keys, "me"))
    assert (kind, names, origin) == (KEYS, keys, "me")
    assert before <= sent <= int(time.time() * 1000)  # the lag is measured from it
    assert parse(message(TAGS, ["{ns:v1:}tags:x"]))[:3] == (TAGS, ["{ns:v1:}tags:x"], "")
    assert parse(message(EVERYTHING))[:3] == (EVERYTHING, [], "")
    # A message of an older version (no send time) is applied all the same.
    assert parse(b'["k", ["a"], "me"]') == (KEYS, ["a"], "me", 0)
    for junk in (
        b"",
        b"\xff",
        b"[1, 2]",
        b'["k", [1], ""]',
        b'{"k": []}',
        b'["x", [], ""]',
        b'["k", [], "", "soon"]',
        b'["k", [], "", 1, 2]',
    ):
        assert parse(junk) == (EVERYTHING, [], "", 0)
    # A send time out of range is no send time (it would overflow the lag's float).
    for sent in (b"-5", b"9" * 400):
        assert parse(b'["k", ["a"], "x", ' + sent + b"]") == (KEYS, ["a"], "x", 0)
    for sent in (b"1.5e3", b"true"):  # not an int: malformed
        assert parse(b'["k", ["a"], "x", ' + sent + b"]") == (EVERYTHING, [], "", 0)
    assert channel_for("ns:v1:") == "{ns:v1:}purge"


def test_apply_dispatches_each_kind() -> None:
    """apply() drops keys, tags, or everything, as the message says."""
    t = tier()
    keep(t, "a")
    keep(t, "b", tags=["T"])
    keep(t, "c")
    apply(t, message(KEYS, ["a"]))
    assert t.get("a") is MISSING
    assert t.get("b") == "v"
    apply(t, message(TAGS, ["T"]))
    assert t.get("b") is MISSING
    assert t.get("c") == "v"
    apply(t, message(KEYS, ["c"], "me"), origin="me")  # our own message: already done
    assert t.get("c") == "v"
    apply(t, b"not json")
    assert len(t) == 0


def test_a_purge_naming_more_than_it_remembers_is_a_flush() -> None:
    """From review: a huge purge (a forged 300k-name message, or a big delete_many) was
    trimmed in quadratic time under the tier's lock; now it flushes at once."""
    t = tier()
    since = t.seq
    assert keep(t, "k")
    t.invalidate(keys=[f"x{i}" for i in range(RECENT * 20)])
    assert t.get("k") is MISSING
    assert not keep(t, "late", since=since)


def test_a_malformed_message_is_a_purge_of_everything() -> None:
    """Deep nesting (a RecursionError in the parser) reads as 'purge everything', never
    as an error that stops the subscriber."""
    assert parse(b"[" * 100_000 + b"]" * 100_000)[0] == EVERYTHING
    t = tier()
    assert keep(t, "k")
    apply(t, b"[" * 100_000 + b"]" * 100_000)
    assert t.get("k") is MISSING
    assert t.enabled


def test_a_forked_child_never_serves_the_parents_tier() -> None:
    """In a forked child no purge reaches the parent's tier: it is flushed and stays off,
    even if something enables it again."""
    t = tier()
    assert keep(t, "k")
    t.forked()
    assert t.get("k") is MISSING
    t.enable()
    assert not t.enabled
    assert not keep(t, "k")
