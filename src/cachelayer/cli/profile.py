"""``cachelayer profile``: what a Redis holds, by group, read safely (docs/operations.md).

The walk (:func:`walk`) is ``SCAN`` only, bounded (``max_keys``), throttled (``rate``
keys/s) and read-only: per inspected key one pipelined round of ``MEMORY USAGE``,
``PTTL`` and ``TYPE``, plus ``GETRANGE 0 25`` (the envelope header) on strings with a
cachelayer-looking name. :func:`summarise` groups the records (pure code, see
``patterns.py``) and :func:`estimate_compression` reads a small sample of uncompressed
cachelayer values whole (``GET``) to zstd-compress their payloads. Values are never
printed or stored in the report.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .envelope_header import Header, parse_header, payload_of
from .patterns import family, infer_patterns, mask_segment, shape

__all__ = [
    "TTL_BUCKETS",
    "GroupReport",
    "KeyRecord",
    "ProfileReport",
    "Sampling",
    "estimate_compression",
    "profile",
    "summarise",
    "ttl_bucket",
    "walk",
]

TTL_BUCKETS = ("none", "<1m", "<1h", "<1d", "longer")
_BIGGEST = 5


def ttl_bucket(pttl_ms: int) -> str:
    """The TTL bucket of a ``PTTL`` reply (-1: no TTL)."""
    if pttl_ms < 0:
        return "none"
    if pttl_ms < 60_000:
        return "<1m"
    if pttl_ms < 3_600_000:
        return "<1h"
    if pttl_ms < 86_400_000:
        return "<1d"
    return "longer"


@dataclass(frozen=True)
class Sampling:
    """Which walked keys get inspected.

    ``fraction`` (0 < f <= 1) picks keys by a hash of their name (the same keys every run);
    ``per_group`` inspects the first N keys of each group in SCAN order (which is hash
    order, so a fair sample). Uninspected keys are counted and their group's figures are
    scaled from the inspected ones.
    """

    fraction: float = 1.0
    per_group: int | None = None

    @classmethod
    def parse(cls, text: str) -> Sampling:
        """``"0.1"`` (a fraction) or ``"500"`` (a count per group)."""
        value = float(text)
        if value <= 0:
            raise ValueError(f"--sample {text}: must be above 0")
        if value <= 1 and "." in text:
            return cls(fraction=value)
        if value != int(value):
            raise ValueError(f"--sample {text}: a fraction in (0, 1] or a whole count")
        return cls(per_group=int(value))

    def describe(self) -> str:
        if self.per_group is not None:
            return f"up to {self.per_group} keys per group"
        return "every key" if self.fraction >= 1 else f"{self.fraction:.0%} of keys"


@dataclass
class KeyRecord:
    """One walked key. ``size`` is None when it was not inspected (or vanished); ``group``
    is set by :func:`summarise`."""

    key: str
    size: int | None = None
    pttl: int | None = None
    type: str | None = None
    header: Header | None = None
    group: str = ""


@dataclass
class GroupReport:
    """The figures of one group; totals are scaled when ``inspected < keys``."""

    name: str
    kind: str
    namespace: str = ""
    version: str = ""
    keys: int = 0
    inspected: int = 0
    bytes: int = 0
    max_bytes: int = 0
    ttl: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TTL_BUCKETS, 0))
    types: dict[str, int] = field(default_factory=dict)
    codecs: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    not_envelopes: int = 0
    biggest: list[tuple[str, int]] = field(default_factory=list)
    share: float = 0.0
    compression: dict[str, Any] | None = None

    @property
    def sampled(self) -> bool:
        return self.inspected < self.keys

    @property
    def avg_bytes(self) -> int:
        return self.bytes // self.keys if self.keys else 0

    @property
    def no_ttl(self) -> int:
        return self.ttl["none"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "namespace": self.namespace or None,
            "version": self.version or None,
            "keys": self.keys,
            "inspected": self.inspected,
            "sampled": self.sampled,
            "bytes": self.bytes,
            "avg_bytes": self.avg_bytes,
            "max_bytes": self.max_bytes,
            "share": round(self.share, 4),
            "ttl": self.ttl,
            "no_ttl": self.no_ttl,
            "types": self.types,
            "codecs": self.codecs,
            "flags": self.flags,
            "not_envelopes": self.not_envelopes,
            "biggest": [{"key": k, "bytes": b} for k, b in self.biggest],
            "compression": self.compression,
        }


@dataclass
class ProfileReport:
    """Everything ``cachelayer profile`` prints."""

    groups: list[GroupReport]
    walked: int
    inspected: int
    complete: bool
    seconds: float
    sampling: str
    dbsize: int | None = None
    used_memory: int | None = None
    lru_untouched: bool | None = None
    redacted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(g.bytes for g in self.groups)

    def as_dict(self) -> dict[str, Any]:
        return {
            "walked": self.walked,
            "inspected": self.inspected,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
            "sampling": self.sampling,
            "dbsize": self.dbsize,
            "used_memory": self.used_memory,
            "total_bytes": self.total_bytes,
            "lru_untouched": self.lru_untouched,
            "redacted": self.redacted,
            "notes": self.notes,
            "groups": [g.as_dict() for g in self.groups],
        }


def _decode(name: bytes | str) -> str:
    return name if isinstance(name, str) else name.decode("utf-8", "backslashreplace")


def _rough_group(key: str) -> tuple[str, ...]:
    """A cheap group for per-group sampling during the walk (before pattern inference)."""
    s = shape(key)
    first = (s.rest.split(":", 1)[0]) if s.rest else ""
    return (s.kind, s.namespace, s.version, mask_segment(first) if first else "")


def _hash_pick(key: str, fraction: float) -> bool:
    if fraction >= 1:
        return True
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def walk(
    client: Any,
    *,
    max_keys: int = 100_000,
    rate: float = 5_000.0,
    sampling: Sampling = Sampling(),
    read_headers: bool = True,
    scan_count: int = 200,
    match: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[KeyRecord], bool]:
    """Walk the keyspace with SCAN; return the records and whether the walk finished.

    At most ``max_keys`` distinct keys are walked, at most ``rate`` per second (0: no
    limit). Each batch costs one ``SCAN`` and one pipelined round for the keys inspected.
    """
    records: list[KeyRecord] = []
    seen: set[str] = set()
    per_group: Counter[tuple[str, ...]] = Counter()
    started = clock()
    cursor: int = 0
    while True:
        cursor, names = client.scan(cursor, match=match, count=scan_count)
        batch: list[KeyRecord] = []
        truncated = False
        for raw in names:
            key = _decode(raw)
            if key in seen:
                continue  # SCAN may return a key twice (while the table is rehashed)
            if len(records) >= max_keys:
                truncated = True
                break
            seen.add(key)
            record = KeyRecord(key)
            records.append(record)
            if sampling.per_group is not None:
                group = _rough_group(key)
                per_group[group] += 1
                if per_group[group] <= sampling.per_group:
                    batch.append(record)
            elif _hash_pick(key, sampling.fraction):
                batch.append(record)
        _inspect(client, batch, read_headers)
        if int(cursor) == 0 and not truncated:
            return records, True
        if truncated or len(records) >= max_keys:
            return records, False
        if rate > 0:
            ahead = len(records) / rate - (clock() - started)
            if ahead > 0:
                sleep(ahead)


def _inspect(client: Any, batch: list[KeyRecord], read_headers: bool) -> None:
    if not batch:
        return
    pipe = client.pipeline(transaction=False)
    for record in batch:
        pipe.execute_command("MEMORY USAGE", record.key)
        pipe.pttl(record.key)
        pipe.type(record.key)
    replies = pipe.execute(raise_on_error=True)
    heads: list[KeyRecord] = []
    for i, record in enumerate(batch):
        size, pttl, kind = replies[3 * i : 3 * i + 3]
        if size is None or pttl == -2:
            continue  # expired or deleted since SCAN returned it: not counted as measured
        record.size, record.pttl, record.type = int(size), int(pttl), _decode(kind)
        if read_headers and record.type == "string" and shape(record.key).kind == "value":
            heads.append(record)
    if heads:
        pipe = client.pipeline(transaction=False)
        for record in heads:
            pipe.getrange(record.key, 0, 25)
        for record, raw in zip(heads, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(raw, bytes):
                record.header = parse_header(raw)


def _group_names(records: list[KeyRecord], read_headers: bool) -> list[tuple[str, ...]]:
    """(name, kind, namespace, version) of each record, in order."""
    out: list[tuple[str, ...]] = [()] * len(records)
    values: dict[tuple[str, str], list[int]] = {}
    foreign: list[int] = []
    for i, record in enumerate(records):
        s = shape(record.key)
        not_ours = read_headers and record.size is not None and record.header is None
        if s.kind == "value" and not not_ours:
            values.setdefault((s.namespace, s.version), []).append(i)
        elif s.kind in ("lease", "lock", "tags"):
            label = {"lease": "leases", "lock": "locks", "tags": "tags"}[s.kind]
            out[i] = (f"{s.namespace}:v{s.version} {label}", s.kind, s.namespace, s.version)
        else:
            foreign.append(i)
    for (ns, version), rows in values.items():
        prefix = f"{ns}:v{version}:"
        patterns = infer_patterns(records[i].key[len(prefix) :] for i in rows)
        for i, pattern in zip(rows, patterns, strict=True):
            out[i] = (f"{prefix}{family(pattern)}*", "value", ns, version)
    for i, pattern in zip(foreign, infer_patterns(records[i].key for i in foreign), strict=True):
        out[i] = (pattern, "foreign", "", "")
    return out


def summarise(
    records: list[KeyRecord], *, read_headers: bool = True, redact: bool = False
) -> list[GroupReport]:
    """Group the records and compute each group's figures, biggest group first."""
    groups: dict[str, GroupReport] = {}
    members: dict[str, list[KeyRecord]] = {}
    names = _group_names(records, read_headers)
    for record, (name, kind, ns, version) in zip(records, names, strict=True):
        group = groups.get(name)
        if group is None:
            group = groups[name] = GroupReport(name, kind, ns, version)
            members[name] = []
        members[name].append(record)
        record.group = name
    for name, group in groups.items():
        _fill(group, members[name], redact)
    total = sum(g.bytes for g in groups.values()) or 1
    for group in groups.values():
        group.share = group.bytes / total
    return sorted(groups.values(), key=lambda g: (-g.bytes, g.name))


def _fill(group: GroupReport, rows: list[KeyRecord], redact: bool) -> None:
    measured = [r for r in rows if r.size is not None]
    group.keys, group.inspected = len(rows), len(measured)
    scale = len(rows) / len(measured) if measured else 0.0
    sizes = [r.size for r in measured if r.size is not None]
    group.bytes = round(sum(sizes) * scale)
    group.max_bytes = max(sizes, default=0)
    ttl = Counter(ttl_bucket(r.pttl) for r in measured if r.pttl is not None)
    group.ttl = {b: round(ttl[b] * scale) for b in TTL_BUCKETS}
    group.types = dict(Counter(r.type for r in measured if r.type))
    if group.kind == "value":
        headers = [r.header for r in measured if r.header is not None]
        group.codecs = dict(Counter(h.codec for h in headers))
        group.flags = dict(Counter(f for h in headers for f in h.flag_names()))
        group.not_envelopes = sum(1 for r in measured if r.header is None)
    top = sorted(measured, key=lambda r: (-(r.size or 0), r.key))[:_BIGGEST]
    group.biggest = [(_redacted(r.key, group) if redact else r.key, r.size or 0) for r in top]


def _redacted(key: str, group: GroupReport) -> str:
    if group.kind == "foreign":
        return group.name
    if group.kind == "value":
        prefix = f"{group.namespace}:v{group.version}:"
        return prefix + ":".join(mask_segment(s) for s in key[len(prefix) :].split(":"))
    return group.name


def estimate_compression(
    client: Any,
    records: list[KeyRecord],
    groups: list[GroupReport],
    *,
    per_group: int = 20,
    max_value_bytes: int = 1 << 20,
    level: int = 3,
) -> None:
    """Zstd-compress the payloads of a sample of uncompressed values; fill ``compression``.

    Reads at most ``per_group`` values per cachelayer group whole (``GET``), each at most
    ``max_value_bytes`` (by ``MEMORY USAGE``). The estimated saving is the sample's mean
    saving per value times the group's uncompressed values (scaled like the other figures).
    """
    import zstandard

    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    by_prefix = {g.name: g for g in groups if g.kind == "value"}
    picks: dict[str, list[KeyRecord]] = {}
    plain: Counter[str] = Counter()
    for record in records:
        name = record.group
        if name not in by_prefix or record.header is None or record.header.compressed:
            continue
        plain[name] += 1
        chosen = picks.setdefault(name, [])
        if len(chosen) < per_group and (record.size or 0) <= max_value_bytes:
            chosen.append(record)
    for name, chosen in picks.items():
        group = by_prefix[name]
        pipe = client.pipeline(transaction=False)
        for record in chosen:
            pipe.get(record.key)
        before = after = sampled = 0
        for raw in pipe.execute(raise_on_error=False):
            payload = payload_of(raw) if isinstance(raw, bytes) else None
            if payload is None:
                continue
            sampled += 1
            before += len(payload)
            after += min(len(payload), len(compressor.compress(payload)))
        scale = group.keys / group.inspected if group.inspected else 0.0
        uncompressed = round(plain[name] * scale)
        saving = (before - after) / sampled if sampled else 0.0
        group.compression = {
            "sampled_values": sampled,
            "payload_bytes": before,
            "compressed_bytes": after,
            "uncompressed_values": uncompressed,
            "estimated_saving_bytes": round(saving * uncompressed),
            "level": level,
        }


def _info_field(client: Any, section: str, name: str) -> int | None:
    try:
        value = client.info(section).get(name)
    except Exception:  # no permission, or a server without the section: not needed
        return None
    return int(value) if value is not None else None


def _sum_or_none(values: Iterable[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def _no_touch(client: Any) -> bool:
    """Ask the server not to refresh LRU/LFU clocks for our reads (Redis 7.2+)."""
    try:
        client.execute_command("CLIENT", "NO-TOUCH", "ON")
    except Exception:  # older servers: the report says that reads touched the keys
        return False
    return True


def profile(
    client: Any,
    *,
    max_keys: int = 100_000,
    rate: float = 5_000.0,
    sampling: Sampling = Sampling(),
    read_values: bool = True,
    redact: bool = False,
    compress_sample: int = 20,
    match: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    nodes: Sequence[Any] | None = None,
) -> ProfileReport:
    """Walk, summarise and estimate: the whole ``cachelayer profile`` run.

    ``nodes``: a Redis Cluster's primaries, one plain client each; each is walked in
    turn (its share of ``max_keys`` and ``rate``) and ``client`` (a cluster client,
    routing by key) reads the values the compression estimate needs.
    """
    started = clock()
    servers = list(nodes) if nodes else [client]
    untouched = None
    if read_values:
        asked = [_no_touch(node) for node in servers]  # every node asked, none skipped
        untouched = all(asked)
    dbsize: int | None = 0
    try:
        for node in servers:
            dbsize = (dbsize or 0) + int(node.dbsize())
    except Exception:  # DBSIZE denied: the coverage line is left out
        dbsize = None
    records: list[KeyRecord] = []
    complete = True
    for node in servers:
        found, done = walk(
            node,
            max_keys=max(1, max_keys // len(servers)),
            rate=rate / len(servers),
            sampling=sampling,
            read_headers=read_values,
            match=match,
            clock=clock,
            sleep=sleep,
        )
        records += found
        complete = complete and done
    groups = summarise(records, read_headers=read_values, redact=redact)
    if read_values and compress_sample > 0:
        estimate_compression(client, records, groups, per_group=compress_sample)
    report = ProfileReport(
        groups=groups,
        walked=len(records),
        inspected=sum(1 for r in records if r.size is not None),
        complete=complete,
        seconds=clock() - started,
        sampling=sampling.describe(),
        dbsize=dbsize,
        used_memory=_sum_or_none(_info_field(node, "memory", "used_memory") for node in servers),
        lru_untouched=untouched,
        redacted=redact,
    )
    report.notes.extend(_notes(report, read_values))
    return report


def _notes(report: ProfileReport, read_values: bool) -> Iterator[str]:
    if not report.complete:
        yield f"stopped after {report.walked} keys (--max-keys): figures cover those keys only"
    if any(g.sampled for g in report.groups):
        yield (
            "sampled groups: bytes, TTL buckets and no-TTL counts are scaled from the "
            "inspected keys; max and biggest keys are of the inspected keys"
        )
    if read_values and report.lru_untouched is False:
        yield (
            "this server has no CLIENT NO-TOUCH (Redis < 7.2): reading envelope headers "
            "refreshed the LRU/LFU clock of the keys read (--no-values avoids it)"
        )
    if not report.redacted:
        yield "key names are shown as stored and may hold ids (--redact-keys shows patterns)"
    yield "bytes are MEMORY USAGE (exact for strings, sampled by Redis for aggregates)"
