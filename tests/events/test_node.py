"""The Node.js package (js/cachelayer-events), the second implementation of the event,
key and envelope formats, against this one on the suite's Redis: Node publishes and a
Python consumer applies; Python writes and Node reads; keys built alike; the docs' worked
example; a Node-built webhook request accepted by the Python receiver.

Node.js 20+ and npm are required (a missing one fails loudly, never skips); ``npm ci``
runs once per test session in js/cachelayer-events.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from cachelayer import Cache
from cachelayer._keys import KeyBuilder, render
from cachelayer.events import (
    ASGIEventReceiver,
    StreamConsumer,
    Verifier,
    stream_for,
)

from .conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "js" / "cachelayer-events"
CacheFactory = Callable[..., Cache]


@pytest.fixture(scope="session")
def node_package() -> Path:
    """js/cachelayer-events with its dependencies installed (``npm ci``, once per test
    session even across xdist workers: a lock file and a stamp of the session's id)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "tests/events/test_node.py needs Node.js 20+ and npm on PATH (the Node package "
            "js/cachelayer-events is tested against the Python one); install them, e.g. "
            "`apt-get install nodejs npm`"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    assert int(version.stdout.lstrip("v").split(".")[0]) >= 20, f"Node {version.stdout} < 20"
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    lock_hash = hashlib.sha256((PACKAGE / "package-lock.json").read_bytes()).hexdigest()
    stamp_text = f"{lock_hash} {run_id}"
    stamp = PACKAGE / "node_modules" / ".cachelayer-npm-ci"
    with (PACKAGE / ".npm-ci.lock").open("w") as lock:  # gitignored with node_modules' line
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == stamp_text):
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"],
                cwd=PACKAGE,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode:
                pytest.fail(f"npm ci failed in {PACKAGE}:\n{done.stdout}\n{done.stderr}")
            stamp.write_text(stamp_text)
    return PACKAGE


def node(package: Path, command: str, request: Any, timeout: float = 30) -> Any:
    """Run ``tools/cli.mjs <command>`` with ``request`` as JSON on stdin; its JSON answer."""
    done = subprocess.run(
        ["node", "tools/cli.mjs", command],
        cwd=package,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_node_unit_tests_pass(node_package: Path) -> None:
    """The package's own tests (``node --test``: the docs' worked examples of the event,
    the envelope, the keys; the reader's refusals) pass."""
    done = subprocess.run(
        ["node", "--test", "test/"], cwd=node_package, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"^# fail 0$", done.stdout, re.M)


def test_node_signs_the_worked_example_of_the_docs(node_package: Path) -> None:
    """The event of docs/events.md built in Node is the documented 138 bytes, with the
    documented signature."""
    doc = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    payload = re.search(r'^\{"v":1,"id":"6f1c.*\}$', doc, re.M)
    signature = re.search(r"^([0-9a-f]{64})$", doc, re.M)
    assert payload is not None
    assert signature is not None
    made = node(
        node_package,
        "example",
        {
            "namespace": "shop",
            "keys": ["user:42"],
            "tags": ["team:7"],
            "origin": "billing-api",
            "id": "6f1c0a5e2b3d4c8f9a7e1d2c3b4a5f60",
            "ts": 1700000000000,
            "kid": "k1",
            "secret": "0123456789abcdef0123456789abcdef",
        },
    )
    assert made["payload"] == payload.group(0)
    assert len(made["payload"].encode()) == 138
    assert made["signature"] == signature.group(1)


#: characters of generated keys: every class the escaping and the key rules treat apart
CLEAN = "abcxyzABC019:_.-~ /%*?[]{!#,=()<>\"'\\é漢字ß😀\u0000\u007f\u00a0\u2028"
HOSTILE = CLEAN + "}}\ud800\udfff"


def _random_keys(rng: random.Random, n: int, alphabet: str = HOSTILE) -> list[str]:
    keys = []
    for _ in range(n):
        length = rng.choice([1, 2, 5, 20, 60, 200, 217, 218, 219, 240, 245, 300])
        keys.append("".join(rng.choice(alphabet) for _ in range(length)))
    return keys


def test_node_builds_the_store_keys_python_builds(node_package: Path) -> None:
    """Store keys, tag keys (long ones hashed, unicode, braces, lone surrogates refused)
    and argument renderings agree with Python's on many generated inputs."""
    rng = random.Random(16)
    keys = [
        "user:42",
        "{user:42}:profile",
        "a}b",
        "x{}y",
        "é" * 300,
        "😀" * 250,
        "{" + "x" * 300 + "}",
        "x" * 200 + "}" + "y" * 100,
        *_random_keys(rng, 150),
        *_random_keys(rng, 350, CLEAN),
    ]
    renderable: list[Any] = [
        "", "42", "-7", "a b", "1:*", "ada", "\ud800", "é😀", 0, -7, 2**53 - 1, True, False,
        None, [1, "a", [None]], {"b": 2, "a": "x y"}, {"z": [], "é": {}},
        *_random_keys(rng, 100),
    ]  # fmt: skip
    # As the values travel (JSON): Python's json joins an escaped surrogate pair into one
    # character, as JavaScript strings do; two lone surrogates side by side in a Python
    # str are another string, which no JSON text carries.
    keys = json.loads(json.dumps(keys))
    renderable = json.loads(json.dumps(renderable))
    errors = {ValueError: "RangeError", TypeError: "TypeError"}
    for namespace, version, max_length in [("shop", 1, 250), ("t.x-1", "2b", 64)]:
        builder = KeyBuilder(namespace, version, max_length)
        expected_keys, expected_tags = [], []
        for key in keys:
            for build, out in ((builder.full, expected_keys), (builder.tag, expected_tags)):
                try:
                    out.append(build(key))
                except (ValueError, TypeError) as exc:
                    out.append({"error": errors[type(exc)]})
        got = node(
            node_package,
            "keys",
            {
                "namespace": namespace,
                "version": version,
                "maxKeyLength": max_length,
                "keys": keys,
                "tags": keys,
                "render": renderable,
            },
        )
        assert got["store"] == expected_keys
        assert got["tags"] == expected_tags
        assert got["render"] == [render(v) for v in renderable]


def js_form(value: Any) -> Any:
    """What tools/cli.mjs prints for the value Node decoded from ``value``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 - 1 else {"$int": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [js_form(v) for v in value]
    if isinstance(value, set | frozenset):
        return {"$set": [js_form(v) for v in sorted(value)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: js_form(v) for k, v in value.items()}
        return {"$map": [[js_form(k), js_form(v)] for k, v in value.items()]}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return {"$py": ["decimal", str(value)]}
    if isinstance(value, dt.datetime):
        return {"$py": ["datetime", [value.replace(tzinfo=None).isoformat(), None, 0]]}
    if isinstance(value, dt.date):
        return {"$py": ["date", value.isoformat()]}
    raise TypeError(type(value))


VALUES: dict[str, Any] = {
    "str": "héllo ✓ 😀 \u2028",
    "int": 42,
    "i64": 2**63 - 1,
    "huge": -(2**70),
    "float": 1.5,
    "nan": float("nan"),
    "inf": float("-inf"),
    "dict": {"a": [1, 2, {"b": None}], "t": True, "__proto__": {"x": 1}},
    "tuple": (1, ("a", b"\x00\xff")),
    "set": {3, 1, 2},
    "map": {1: "one", (2, 3): "pair"},
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "date": dt.date(2024, 2, 29),
    "datetime": dt.datetime(2024, 1, 2, 3, 4, 5, 6),
    "decimal": Decimal("-1.50E+3"),
    "cl": {"$cl": ["int", "1"]},  # a user dict spelling a tag: stored as a map, read as one
    "key with spaces and é": "unicode key",
    "long:" + "y" * 400: "a hashed long key",
}


def test_node_reads_what_python_wrote(
    events_cache: CacheFactory, node_package: Path, redis_url: str
) -> None:
    """Values of many types, a tagged entry (then invalidated), a compressed large value
    and long and unicode keys, written by a Python Cache, read back equal by Node."""
    cache = events_cache()
    namespace = cache.engine.keys.namespace
    for key, value in VALUES.items():
        cache.set(key, value)
    large = {"rows": [{"id": i, "name": f"row {i}"} for i in range(2000)]}
    cache.set("large", large)
    raw = redis.Redis.from_url(redis_url).get(cache.engine.keys.full("large"))
    assert raw is not None
    assert raw[4] & 0x01, "the large value should be zstd-compressed"
    tagged = cache.cached(ttl=60, key="team:{n}", tags=["team:{n}"])(lambda n: {"team": n})
    tagged(7)
    cache.set("expired", "x", ttl=0.05)
    time.sleep(0.1)
    keys = [*VALUES, "large", "team:7", "absent", "expired"]
    got = node(node_package, "read", {"redisUrl": redis_url, "namespace": namespace, "keys": keys})
    for key, value in VALUES.items():
        # A user dict whose only key is "$cl" is stored as a map: Node reads a Map.
        expected = {"$map": [["$cl", ["int", "1"]]]} if key == "cl" else js_form(value)
        assert got[key] == {"hit": expected}, key
    assert got["large"] == {"hit": large}
    assert got["team:7"] == {"hit": {"team": 7}}
    assert got["absent"]["miss"] == "absent"
    assert got["expired"]["miss"] in ("absent", "stale")
    cache.invalidate_tags("team:7")
    got = node(
        node_package, "read", {"redisUrl": redis_url, "namespace": namespace, "keys": ["team:7"]}
    )
    assert got["team:7"]["miss"] == "tags"


def test_node_reads_a_signed_cache_only_with_its_key(
    events_cache: CacheFactory, node_package: Path, redis_url: str
) -> None:
    """A signing Cache's entries verify in Node with its key (rotation: any of a list),
    and are refused without it or with another one."""
    key = os.urandom(32)
    cache = events_cache(signing_key=key)
    namespace = cache.engine.keys.namespace
    cache.set("user:1", {"name": "ada"})
    cache.set("big", "z" * 5000)
    request = {"redisUrl": redis_url, "namespace": namespace, "keys": ["user:1", "big"]}
    got = node(node_package, "read", {**request, "signingKeys": [os.urandom(32).hex(), key.hex()]})
    assert got == {"user:1": {"hit": {"name": "ada"}}, "big": {"hit": "z" * 5000}}
    for wrong in ([os.urandom(32).hex()], None):
        got = node(node_package, "read", {**request, "signingKeys": wrong})
        assert got["user:1"]["miss"] == "rejected"


def test_a_node_event_drops_the_entry_in_python_local_tiers(
    events_cache: CacheFactory,
    consumers: Callable[..., StreamConsumer],
    node_package: Path,
    redis_url: str,
    verifier: Verifier,
) -> None:
    """Node publishes on the namespace's stream; a Python consumer applies it; a reader's
    local tier (another Cache, as another process would be) drops the entry."""
    reader = events_cache(local={"max_ttl": 30})
    applier = events_cache(publish_invalidations=True)
    assert reader.wait_local(5)
    reader.set("user:1", "v1")
    reader.set("user:2", "v2")
    assert reader.get("user:1") == "v1"
    assert reader.get("user:1") == "v1"  # now from the local tier
    consumer = consumers(applier, verifier)
    consumer.poll()
    published = node(
        node_package,
        "publish",
        {
            "redisUrl": redis_url,
            "namespace": reader.engine.keys.namespace,
            "keys": ["user:1"],
            "tags": ["team:é"],
            "kid": "k2",
            "secretHex": SECRET.hex(),
            "origin": "node-test",
        },
    )
    assert re.fullmatch(r"\d+-\d+", published["entryId"])
    consumer.run_in_thread()
    deadline = time.monotonic() + 10
    while reader.get("user:1") is not None:
        assert time.monotonic() < deadline, "the Node event was not applied"
        time.sleep(0.01)
    consumer.stop()
    assert consumer.counters.applied == 1
    assert sum(consumer.counters.refused.values()) == 0
    assert reader.get("user:2") == "v2"
    fields = redis.Redis.from_url(redis_url).xrange(stream_for(reader.engine.keys.namespace))[0][1]
    assert json.loads(fields[b"p"])["id"] == published["id"]


async def test_a_node_webhook_request_is_accepted_by_the_asgi_receiver(
    events_cache: CacheFactory, node_package: Path, verifier: Verifier
) -> None:
    """``webhookRequest`` in Node gives a body and headers the Python ASGI receiver
    applies; the same request again is a duplicate; with another key it is refused."""
    cache = events_cache()
    cache.set("user:9", 1)
    request = {"namespace": cache.engine.keys.namespace, "keys": ["user:9"], "kid": "k2"}
    made = node(node_package, "webhook", {**request, "secretHex": SECRET.hex()})
    assert made["method"] == "POST"
    app = ASGIEventReceiver(cache, verifier)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:
            body = base64.b64decode(made["body"])
            answer = await client.post("/", content=body, headers=made["headers"])
            assert (answer.status_code, answer.json()) == (200, {"status": "applied"})
            answer = await client.post("/", content=body, headers=made["headers"])
            assert answer.json() == {"status": "duplicate"}
            forged = node(node_package, "webhook", {**request, "secretHex": os.urandom(32).hex()})
            answer = await client.post(
                "/", content=base64.b64decode(forged["body"]), headers=forged["headers"]
            )
            assert answer.status_code == 401
    finally:
        await app.aclose()
    assert await cache.aget("user:9") is None
