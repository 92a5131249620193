"""`cachelayer profile` against a private Redis filled with known patterns and sizes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachelayer import Cache
from cachelayer.__main__ import main
from cachelayer._keys import KeyBuilder, derived_key
from cachelayer.cli.patterns import infer_patterns, mask_segment, shape
from cachelayer.cli.profile import GroupReport, Sampling, profile, ttl_bucket
from cachelayer.testing import RedisServer

FIRST_NAMES = [f"name{chr(97 + i % 26)}{chr(97 + i // 26)}x" for i in range(40)]


def get_team(team_id: int) -> dict[str, Any]:
    return {"id": team_id, "members": list(range(20))}


def _fill(url: str) -> None:
    """Known data: cachelayer namespaces written by Cache, and foreign keys."""
    shop = Cache(url, namespace="shop", ttl=300, jitter=0, compress_threshold=None)
    for i in range(30):
        shop.set(f"user:{i}", {"id": i, "name": "x" * 100})
    team = shop.cached(ttl=30)(get_team)
    for i in range(20):
        team(i)
    for day in range(5):
        shop.set(f"report:2024-01-0{day + 1}:summary", {"rows": ["line"] * 2000}, ttl=None)
    zipped = Cache(url, namespace="shop", ttl=600, jitter=0, compress_threshold=1024)
    for i in range(3):
        zipped.set(f"blob:{i}", "abc" * 3000)
    api = Cache(url, namespace="api", version=2, codec="msgpack", ttl=2 * 86400, jitter=0)
    for i in range(10):
        api.set(f"item:{i}", list(range(50)))
    for cache in (shop, zipped, api):
        cache.close()
    r = redis.Redis.from_url(url)
    keys = KeyBuilder("shop", 1)
    for i in range(4):
        r.set(derived_key(keys.full(f"user:{i}"), "lease"), b"tok", px=10_000)
        r.set(keys.tag(f"user:{i}"), b"12345678", px=3_600_000 * 30)
    for _ in range(40):
        r.set(f"session:{uuid.uuid4()}", b"s" * 200, ex=1800)
    for i in range(50):
        r.set(f"rate:user:{1000 + i}", b"7", ex=50)
    for _ in range(10):
        r.set(f"celery-task-meta-{uuid.uuid4()}", b"{}")
    r.set("config", b"on")
    for i in range(10):
        r.hset(f"cart:{i}", mapping={f"sku{j}": j for j in range(20)})
    for _ in range(40):
        r.set(f"auth:token:{uuid.uuid4().hex[:10]}Zq{uuid.uuid4().hex[:10]}", b"t", ex=7200)
    for name in FIRST_NAMES:
        r.set(f"user:name:{name}", b"n", ex=90_000)
    r.close()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        _fill(srv.url)
        yield srv


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(server.url)
    yield r
    r.close()


def _by_name(groups: list[GroupReport]) -> dict[str, GroupReport]:
    return {g.name: g for g in groups}


EXPECTED_GROUPS = {
    "shop:v1:user:*": ("value", 30),
    "shop:v1:tests.test_profile.get_team:*": ("value", 20),
    "shop:v1:report:*": ("value", 5),
    "shop:v1:blob:*": ("value", 3),
    "api:v2:item:*": ("value", 10),
    "shop:v1 leases": ("lease", 4),
    "shop:v1 tags": ("tags", 4),
    "session:{id}": ("foreign", 40),
    "rate:user:{id}": ("foreign", 50),
    "celery-task-meta-{id}": ("foreign", 10),
    "config": ("foreign", 1),
    "cart:{id}": ("foreign", 10),
    "auth:token:{id}": ("foreign", 40),
    "user:name:{id}": ("foreign", 40),
}


def test_groups_are_cachelayer_families_and_inferred_foreign_patterns(
    client: redis.Redis,
) -> None:
    """Every key lands in the expected group, with the expected count."""
    report = profile(client, rate=0)
    found = {g.name: (g.kind, g.keys) for g in report.groups}
    assert found == EXPECTED_GROUPS
    assert report.complete
    assert report.walked == report.inspected == sum(n for _, n in EXPECTED_GROUPS.values())


def test_group_bytes_match_memory_usage(client: redis.Redis) -> None:
    """Per-group bytes equal the sum of MEMORY USAGE over the group's keys (within 5%)."""
    report = profile(client, rate=0)
    for group in report.groups:
        pattern = group.name.replace("{id}", "*")
        if group.kind == "lease":
            pattern = "{shop:v1:*}:lease"
        elif group.kind == "tags":
            pattern = "{shop:v1:}tags:*"
        keys = list(client.scan_iter(match=pattern, count=500))
        assert len(keys) == group.keys, group.name
        expected = sum(int(client.memory_usage(k)) for k in keys)  # type: ignore[arg-type]
        assert group.bytes == pytest.approx(expected, rel=0.05), group.name
        assert group.max_bytes == max(int(client.memory_usage(k)) for k in keys)  # type: ignore[arg-type]
    assert sum(g.share for g in report.groups) == pytest.approx(1.0)


def test_ttl_buckets_and_keys_without_ttl_are_exact(client: redis.Redis) -> None:
    """TTL buckets come from PTTL, and keys without a TTL are counted exactly."""
    groups = _by_name(profile(client, rate=0).groups)
    assert groups["shop:v1:user:*"].ttl == {"none": 0, "<1m": 0, "<1h": 30, "<1d": 0, "longer": 0}
    assert groups["shop:v1:tests.test_profile.get_team:*"].ttl["<1m"] == 20
    assert groups["shop:v1:report:*"].no_ttl == 5
    assert groups["api:v2:item:*"].ttl["longer"] == 10
    assert groups["rate:user:{id}"].ttl["<1m"] == 50
    assert groups["celery-task-meta-{id}"].no_ttl == 10
    assert groups["cart:{id}"].no_ttl == 10
    assert groups["user:name:{id}"].ttl["longer"] == 40
    assert groups["shop:v1 tags"].ttl["longer"] == 4
    assert groups["shop:v1 leases"].ttl["<1m"] == 4
    assert sum(g.no_ttl for g in groups.values()) == 5 + 10 + 1 + 10


def test_envelope_codecs_flags_and_compression_estimate(client: redis.Redis) -> None:
    """Codec and flags come from the header; uncompressed values get a zstd saving estimate."""
    groups = _by_name(profile(client, rate=0).groups)
    assert groups["shop:v1:user:*"].codecs == {"json": 30}
    assert groups["api:v2:item:*"].codecs == {"msgpack": 10}
    assert groups["shop:v1:blob:*"].flags == {"zstd": 3}
    assert groups["shop:v1:blob:*"].compression is None  # already compressed
    report = groups["shop:v1:report:*"].compression
    assert report is not None
    assert report["sampled_values"] == 5
    assert report["uncompressed_values"] == 5
    assert report["compressed_bytes"] < report["payload_bytes"] / 10  # "line" x 2000
    assert report["estimated_saving_bytes"] > 5 * 10_000
    assert groups["cart:{id}"].types == {"hash": 10}


def test_max_keys_bounds_the_walk(client: redis.Redis) -> None:
    """--max-keys stops the walk at exactly that many keys and says the walk is partial."""
    report = profile(client, rate=0, max_keys=25)
    assert report.walked == 25
    assert sum(g.keys for g in report.groups) == 25
    assert not report.complete
    assert any("--max-keys" in note for note in report.notes)


def test_rate_limit_sleeps_between_batches(client: redis.Redis) -> None:
    """At 100 keys/s the walk asks to sleep until it is back under the rate (fake clock)."""
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    report = profile(client, rate=100, clock=lambda: now[0], sleep=sleep, compress_sample=0)
    assert slept
    assert sum(slept) == pytest.approx(report.walked / 100, rel=0.5)


def test_sampling_per_group_scales_totals(client: redis.Redis) -> None:
    """Sampling 5 keys per group inspects fewer keys and scales uniform groups closely."""
    full = _by_name(profile(client, rate=0).groups)
    sampled = profile(client, rate=0, sampling=Sampling(per_group=5))
    assert sampled.inspected < sampled.walked
    groups = _by_name(sampled.groups)
    for name in ("shop:v1:user:*", "rate:user:{id}", "session:{id}"):
        group = groups[name]
        assert group.sampled
        assert group.inspected == 5
        assert group.keys == full[name].keys
        assert group.bytes == pytest.approx(full[name].bytes, rel=0.05)


def test_redacted_report_shows_no_key_names(client: redis.Redis) -> None:
    """With redaction the biggest keys are patterns: no id from the data appears."""
    report = profile(client, rate=0, redact=True)
    shown = json.dumps(report.as_dict())
    for name in FIRST_NAMES:
        assert name not in shown
    assert "session:{id}" in shown
    assert "shop:v1:user:{id}" in shown


def test_values_are_never_printed(
    server: RedisServer, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """The command's table, JSON and HTML hold no stored value."""
    page = tmp_path / "profile.html"
    assert main(["profile", "--redis", server.url, "--rate", "0", "--html", str(page)]) == 0
    table = capsys.readouterr().out
    assert main(["profile", "--redis", server.url, "--rate", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {g["name"] for g in data["groups"]} == set(EXPECTED_GROUPS)
    for text in (table, json.dumps(data), page.read_text()):
        assert "xxxxxxxxxx" not in text  # the users' names
        assert "abcabcabc" not in text  # the blobs
        assert "sku1" not in text  # the carts' fields
    assert "Memory by key group" in table


def test_classifier_follows_the_key_layout() -> None:
    """Values, leases (both forms), locks and tag keys are told apart by their layout."""
    keys = KeyBuilder("shop", 1)
    assert shape(keys.full("user:1")).kind == "value"
    assert shape(derived_key(keys.full("user:1"), "lease")).kind == "lease"
    assert shape(derived_key(keys.full("{user:1}:profile"), "lease")).kind == "lease"
    assert shape(derived_key(keys.full("user:1"), "lock")).kind == "lock"
    assert shape(keys.tag("user:1")).kind == "tags"
    assert shape("session:abc").kind == "foreign"
    assert shape("{weird}:thing").kind == "foreign"


@pytest.mark.parametrize(
    ("segment", "masked"),
    [
        ("42", "{id}"),
        ("v2", "v2"),
        ("user_123", "user_{id}"),
        ("550e8400-e29b-41d4-a716-446655440000", "{id}"),
        ("deadbeef00", "{id}"),
        ("celery-task-meta-550e8400-e29b-41d4-a716-446655440000", "celery-task-meta-{id}"),
        ("aB3dE5gH7jK9mN1pQ", "{id}"),
        ("!u00ff", "{id}"),
        ("team_id=7", "{id}"),
        ("profile", "profile"),
    ],
)
def test_segment_masking(segment: str, masked: str) -> None:
    """Numbers, UUIDs, hex ids, opaque tokens and rendered arguments become {id}."""
    assert mask_segment(segment) == masked


def test_many_literals_at_one_position_collapse() -> None:
    """More than 32 distinct literals after one prefix are ids; a few stay literal."""
    keys = [f"user:name:{n}" for n in FIRST_NAMES] + ["feature:dark", "feature:beta"]
    patterns = infer_patterns(keys)
    assert set(patterns[:40]) == {"user:name:{id}"}
    assert patterns[40:] == ["feature:dark", "feature:beta"]


def test_ttl_bucket_edges() -> None:
    """PTTL -1 is no TTL; the buckets are <1m, <1h, <1d and longer."""
    assert [ttl_bucket(v) for v in (-1, 0, 59_999, 60_000, 3_599_999, 86_399_999, 86_400_000)] == [
        "none", "<1m", "<1m", "<1h", "<1h", "<1d", "longer",
    ]  # fmt: skip
