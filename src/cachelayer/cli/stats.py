"""``cachelayer stats``: what the whole fleet's caches do, from the figures each process
publishes (``Cache(publish_stats=10)``, ``cachelayer._fleet``).

See docs/observability.md.

Reads, per namespace, the index ``{<ns>:}fleet`` and the snapshots it lists (one
``GET`` and one ``MGET``); without ``--namespace`` it first finds the namespaces with a
``SCAN`` for ``{*:}fleet``. Sums the processes: totals since each process started, and
rates over each process's last interval (so "per second" is the last ~10 s, not the
lifetime). The cost section is an estimate from those rates, and says so.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._fleet import FORMAT, RATES, index_key, snapshot_key
from .._metrics import HistogramSnapshot

__all__ = ["add_arguments", "main", "read_fleet", "summarize"]

HOURS_PER_MONTH = 730.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", required=True, metavar="URL", help="the Redis the caches use")
    parser.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="the Cache namespace (repeatable; default: every namespace that publishes, "
        "found with SCAN)",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    parser.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--price-per-million-reads",
        type=float,
        metavar="X",
        help="what a million database reads cost you (for the cost estimate)",
    )
    parser.add_argument(
        "--node-hourly-price",
        type=float,
        metavar="Y",
        help="what the Redis node costs per hour (for the cost estimate)",
    )


# -- reading ---------------------------------------------------------------------------------


def _namespaces(client: Any) -> list[str]:
    found = set()
    for raw in client.scan_iter(match="{*:}fleet", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        if key.startswith("{") and key.endswith(":}fleet"):
            found.add(key[1 : -len(":}fleet")])
    return sorted(found)


def read_fleet(
    client: Any, namespaces: Sequence[str] | None = None, now: float | None = None
) -> dict[str, list[dict[str, Any]]]:
    """``{namespace: [snapshot of each live process]}`` read with a redis-py client."""
    now_ms = int((time.time() if now is None else now) * 1000)
    out: dict[str, list[dict[str, Any]]] = {}
    for ns in namespaces if namespaces else _namespaces(client):
        raw = client.get(index_key(ns))
        try:
            members = json.loads(raw) if raw else {}
        except ValueError:
            members = {}
        live = sorted(
            m for m, exp in members.items() if isinstance(exp, (int, float)) and exp > now_ms
        )
        snaps = []
        if live:
            for blob in client.mget([snapshot_key(ns, m) for m in live]):
                if not blob:
                    continue  # the process stopped, or its key expired
                try:
                    doc = json.loads(blob)
                except ValueError:
                    continue
                if isinstance(doc, dict) and doc.get("format") == FORMAT:
                    snaps.append(doc)
        out[ns] = snaps
    return out


# -- summing ---------------------------------------------------------------------------------


def _add(into: dict[str, float], more: Mapping[str, float]) -> None:
    for name, n in more.items():
        into[name] = into.get(name, 0) + n


def _lag(snaps: Iterable[Mapping[str, Any]]) -> HistogramSnapshot | None:
    total: HistogramSnapshot | None = None
    for snap in snaps:
        local = snap.get("local")
        if not local:
            continue
        lag = local["lag"]
        hist = HistogramSnapshot(tuple(lag["bounds"]), tuple(lag["counts"]), lag["sum"])
        total = hist if total is None else total + hist
    return total


def summarize(
    snaps: Sequence[Mapping[str, Any]],
    price_per_million_reads: float | None = None,
    node_hourly_price: float | None = None,
) -> dict[str, Any]:
    """The fleet's figures for one namespace, summed over its processes' snapshots."""
    totals: dict[str, float] = {}
    rates: dict[str, float] = dict.fromkeys(RATES, 0.0)
    kinds: dict[str, float] = {}
    functions: dict[str, dict[str, Any]] = {}
    for snap in snaps:
        _add(totals, snap["totals"])
        _add(rates, snap["rates"])
        _add(kinds, snap.get("errors_by_kind", {}))
        for name, fn in snap["functions"].items():
            row = functions.setdefault(name, {"rates": {}})
            _add(row, {k: v for k, v in fn.items() if k != "rates"})
            _add(row["rates"], fn["rates"])
    for row in functions.values():
        reads = row.get("hits", 0) + row.get("misses", 0)
        row["hit_ratio"] = row.get("hits", 0) / reads if reads else None
        row["mean_load_seconds"] = row["load_seconds"] / row["loads"] if row.get("loads") else None
    reads = totals.get("hits", 0) + totals.get("misses", 0)
    reads_now = rates["hits"] + rates["misses"]
    lag = _lag(snaps)
    avoided = rates["hits"]
    out: dict[str, Any] = {
        "processes": len(snaps),
        "hosts": len({s["host"] for s in snaps}),
        "breaker_open": sum(1 for s in snaps if s.get("breaker") == "open"),
        "totals": totals,
        "rates": rates,
        "hit_ratio": totals.get("hits", 0) / reads if reads else None,
        "hit_ratio_now": rates["hits"] / reads_now if reads_now else None,
        "loads_per_second": rates["loads"],
        "reads_avoided": {
            "per_second": avoided,
            "per_hour": avoided * 3600,
            "per_month": avoided * 3600 * HOURS_PER_MONTH,
        },
        "stale_served": totals.get("stale_hits", 0) + totals.get("stale_on_error", 0),
        "stale_per_second": rates["stale_hits"] + rates["stale_on_error"],
        "errors": {
            "store": totals.get("store_errors", 0),
            "load": totals.get("load_errors", 0),
            "invalidation": totals.get("invalidation_errors", 0),
            "by_kind": kinds,
            "per_second": rates["store_errors"] + rates["load_errors"],
        },
        "invalidation_lag_p99": None if lag is None else lag.quantile(0.99),
        "functions": dict(
            sorted(
                functions.items(), key=lambda kv: -(kv[1].get("hits", 0) + kv[1].get("misses", 0))
            )
        ),
        "cost": None,
    }
    if price_per_million_reads is not None or node_hourly_price is not None:
        month = avoided * 3600 * HOURS_PER_MONTH
        saved = None if price_per_million_reads is None else month / 1e6 * price_per_million_reads
        node = None if node_hourly_price is None else node_hourly_price * HOURS_PER_MONTH
        out["cost"] = {
            "estimate": True,
            "reads_avoided_per_month": month,
            "database_reads_saved_per_month": saved,
            "redis_node_per_month": node,
            "saved_over_cost": saved / node if saved is not None and node else None,
        }
    return out


# -- showing ---------------------------------------------------------------------------------


def _n(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{suffix}{unit}"
    return (
        f"{value:.0f}{unit}"
        if float(value).is_integer() or abs(value) >= 10
        else f"{value:.1f}{unit}"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "> 2.5 s"
    if value < 0.001:
        return f"{value * 1e6:.0f} us"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def render(fleet: Mapping[str, Mapping[str, Any]]) -> Any:
    """The rich renderable of every namespace's summary."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    if not fleet:
        parts.append(
            Text("no process publishes stats here: Cache(..., publish_stats=10) turns it on")
        )
    for ns, s in fleet.items():
        head = Table(title=f"namespace {ns}", show_header=False, title_justify="left")
        head.add_column("figure")
        head.add_column("value")
        errors = s["errors"]
        head.add_row("processes", f"{s['processes']} on {s['hosts']} host(s)")
        head.add_row(
            "hit ratio", f"{_pct(s['hit_ratio_now'])} now, {_pct(s['hit_ratio'])} since start"
        )
        head.add_row("loads", f"{_n(s['loads_per_second'])}/s")
        avoided = s["reads_avoided"]
        head.add_row(
            "database reads avoided",
            f"{_n(avoided['per_second'])}/s = {_n(avoided['per_hour'])}/hour = "
            f"{_n(avoided['per_month'])}/month",
        )
        head.add_row("stale serves", f"{_n(s['stale_served'])} ({_n(s['stale_per_second'])}/s)")
        kinds = ", ".join(f"{k} {_n(v)}" for k, v in sorted(errors["by_kind"].items()))
        head.add_row(
            "errors",
            f"store {_n(errors['store'])}, load {_n(errors['load'])}, invalidation "
            f"{_n(errors['invalidation'])} ({_n(errors['per_second'])}/s)"
            + (f"; {kinds}" if kinds else ""),
        )
        lag = s["invalidation_lag_p99"]
        bound = "" if lag is None or lag == float("inf") else "<= "  # a bucket's bound
        head.add_row("invalidation lag p99", bound + _seconds(lag))
        if s["breaker_open"]:
            head.add_row("circuit breaker", f"[red]open in {s['breaker_open']} process(es)[/]")
        parts.append(head)
        if s["functions"]:
            fns = Table(title="per function", title_justify="left")
            for col in (
                "function",
                "reads/s",
                "hit ratio",
                "loads/s",
                "mean load",
                "stale",
                "load errors",
            ):
                if col == "function":
                    fns.add_column(col, overflow="fold")
                else:
                    fns.add_column(col, justify="right")
            for name, row in s["functions"].items():
                r = row["rates"]
                fns.add_row(
                    name,
                    _n(r.get("hits", 0) + r.get("misses", 0)),
                    _pct(row["hit_ratio"]),
                    _n(r.get("loads", 0)),
                    _seconds(row["mean_load_seconds"]),
                    _n(row.get("stale_hits", 0) + row.get("stale_on_error", 0)),
                    _n(row.get("load_errors", 0)),
                )
            parts.append(fns)
        cost = s["cost"]
        if cost is not None:
            table = Table(
                title="COST ESTIMATES (not a bill)",
                caption="last interval's rates x 730 h/month",
                show_header=False,
                title_justify="left",
                caption_justify="left",
            )
            table.add_column("figure")
            table.add_column("value")
            table.add_row(
                "database reads avoided", f"~{_n(cost['reads_avoided_per_month'])}/month"
            )
            table.add_row(
                "their price", f"~{_money(cost['database_reads_saved_per_month'])}/month"
            )
            table.add_row("Redis node", f"~{_money(cost['redis_node_per_month'])}/month")
            if cost["saved_over_cost"] is not None:
                table.add_row("saved / spent", f"~{cost['saved_over_cost']:.1f}x")
            parts.append(table)
    return Group(*parts)


def _figures(client: Any, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    fleet = read_fleet(client, args.namespace)
    return {
        ns: summarize(snaps, args.price_per_million_reads, args.node_hourly_price)
        for ns, snaps in fleet.items()
        if snaps or args.namespace
    }


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ._connect import connect

    servers = connect(args.redis, timeout=5)  # a cluster: SCAN walks every primary
    client = servers.client
    console = Console()
    try:
        if args.json:
            print(json.dumps({"namespaces": _figures(client, args)}, indent=2))
            return 0
        if args.watch is None:
            console.print(render(_figures(client, args)))
            return 0
        from rich.live import Live

        done = 0
        try:
            with Live(render(_figures(client, args)), console=console, auto_refresh=False) as live:
                while True:
                    done += 1
                    if args.iterations and done >= args.iterations:
                        break
                    time.sleep(args.watch)
                    live.update(render(_figures(client, args)), refresh=True)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        servers.close()
