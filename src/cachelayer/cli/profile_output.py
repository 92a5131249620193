"""``cachelayer profile``'s arguments and its three outputs: a rich table, JSON and HTML."""

from __future__ import annotations

import argparse
import html
import json
import sys
from typing import Any

from .profile import TTL_BUCKETS, GroupReport, ProfileReport, Sampling, profile

__all__ = ["add_arguments", "main", "render_html", "render_terminal"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cachelayer profile``."""
    parser.add_argument("--redis", required=True, metavar="URL", help="redis://host:port/db")
    parser.add_argument(
        "--sample",
        type=Sampling.parse,
        default=Sampling(),
        metavar="F|N",
        help="inspect a fraction of keys (0.1) or up to N keys per group (500); the rest "
        "are counted and figures scaled (default: every walked key)",
    )
    parser.add_argument(
        "--max-keys", type=int, default=100_000, help="stop the walk after this many keys"
    )
    parser.add_argument(
        "--rate", type=float, default=5_000.0, help="keys per second at most (0: no limit)"
    )
    parser.add_argument("--match", help="SCAN MATCH pattern (default: every key)")
    parser.add_argument(
        "--no-values",
        action="store_true",
        help="do not read envelope headers or values (no codec, flags or compression figures)",
    )
    parser.add_argument(
        "--compress-sample",
        type=int,
        default=20,
        metavar="N",
        help="values read per group for the compression estimate (0: none)",
    )
    parser.add_argument(
        "--redact-keys", action="store_true", help="show key patterns, never key names"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--html", metavar="PATH", help="also write an offline HTML page")


def main(args: argparse.Namespace) -> int:
    """Run ``cachelayer profile``; 0 on success, 2 when the server cannot be read."""
    import redis
    from redis.exceptions import RedisClusterException

    from ..errors import ConfigurationError
    from ._connect import connect

    servers = None
    try:
        servers = connect(args.redis, timeout=10)
        report = profile(
            servers.client,
            nodes=servers.primaries if len(servers.primaries) > 1 else None,
            max_keys=args.max_keys,
            rate=args.rate,
            sampling=args.sample,
            read_values=not args.no_values,
            redact=args.redact_keys,
            compress_sample=args.compress_sample,
            match=args.match,
        )
    except redis.exceptions.NoPermissionError as exc:
        print(f"cachelayer profile: the user may not run a command it needs: {exc}. "
              "It needs SCAN, MEMORY USAGE, PTTL, TYPE (and GETRANGE, GET unless "
              "--no-values).", file=sys.stderr)  # fmt: skip
        return 2
    except (redis.exceptions.RedisError, RedisClusterException, ConfigurationError) as exc:
        print(f"cachelayer profile: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if servers is not None:
            servers.close()
    if args.html:
        with open(args.html, "w", encoding="utf-8") as out:
            out.write(render_html(report))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        render_terminal(report)
        if args.html:
            print(f"HTML page written to {args.html}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def _approx(group: GroupReport, text: str) -> str:
    return f"~{text}" if group.sampled else text


def _codec_text(group: GroupReport) -> str:
    if group.kind != "value":
        return ", ".join(f"{t} {n}" for t, n in sorted(group.types.items()))
    parts = [f"{c} {n}" for c, n in sorted(group.codecs.items())]
    parts += [f"{f} {n}" for f, n in sorted(group.flags.items())]
    if group.not_envelopes:
        parts.append(f"not an envelope {group.not_envelopes}")
    return ", ".join(parts)


def _saving_text(group: GroupReport) -> str:
    c = group.compression
    if not c or not c["sampled_values"]:
        return ""
    ratio = 1 - c["compressed_bytes"] / c["payload_bytes"] if c["payload_bytes"] else 0.0
    # Floored: a payload that shrinks by 99.6% did not shrink by 100%.
    return f"~{_size(c['estimated_saving_bytes'])} ({int(ratio * 100)}%, n={c['sampled_values']})"


def _summary_lines(report: ProfileReport) -> list[str]:
    coverage = f"{report.walked} keys walked"
    if report.dbsize is not None:
        coverage += f" of {report.dbsize} in the database"
    coverage += f", {report.inspected} inspected ({report.sampling}) in {report.seconds:.1f} s"
    lines = [coverage, f"measured total {_size(report.total_bytes)}"]
    if report.used_memory is not None:
        lines[-1] += f" (server used_memory {_size(report.used_memory)})"
    return lines


def render_terminal(report: ProfileReport, console: Any = None) -> None:
    """Print the report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for line in _summary_lines(report):
        console.print(line)
    table = Table(title="Memory by key group", title_justify="left")
    for name, justify in (
        ("group", "left"), ("kind", "left"), ("keys", "right"), ("bytes", "right"),
        ("share", "right"), ("avg", "right"), ("max", "right"), ("no TTL", "right"),
        ("TTL " + " / ".join(TTL_BUCKETS[1:]), "right"), ("codec / type", "left"),
        ("zstd would save", "right"),
    ):  # fmt: skip
        # Group names fold rather than end in an ellipsis: a cut name is no name.
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            overflow="fold",
            min_width=12 if name == "group" else None,
        )
    for g in report.groups:
        no_ttl = _approx(g, str(g.no_ttl))
        table.add_row(
            g.name,
            g.kind,
            str(g.keys) + (f" ({g.inspected} insp.)" if g.sampled else ""),
            _approx(g, _size(g.bytes)),
            f"{g.share:.1%}",
            _approx(g, _size(g.avg_bytes)),
            _size(g.max_bytes),
            f"[bold red]{no_ttl}[/]" if g.no_ttl and g.kind != "tags" else no_ttl,
            " / ".join(str(g.ttl[b]) for b in TTL_BUCKETS[1:]),
            _codec_text(g),
            _saving_text(g),
        )
    console.print(table)
    biggest = sorted(
        ((key, size, g.name) for g in report.groups for key, size in g.biggest),
        key=lambda t: -t[1],
    )[:10]
    keys = Table(title="Biggest keys", title_justify="left")
    keys.add_column("key (pattern)" if report.redacted else "key")
    keys.add_column("bytes", justify="right")
    keys.add_column("group")
    for key, size, group in biggest:
        keys.add_row(key, _size(size), group)
    console.print(keys)
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")


_CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: #5a6372; margin: 2px 0; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 5px 6px; border-bottom: 1px solid #e3e6eb; text-align: left;
  vertical-align: middle; }
th { background: #f4f6f9; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.name { font-family: ui-monospace, monospace; font-size: 13px; min-width: 200px;
  overflow-wrap: anywhere; }
td.small { font-size: 12px; color: #3c4452; white-space: normal; min-width: 90px; }
td.share { white-space: nowrap; font-variant-numeric: tabular-nums; }
.bar { background: #eef1f5; height: 14px; width: 110px; border-radius: 3px;
  display: inline-block; vertical-align: middle; margin-right: 6px; }
.bar > div { background: #3b6fd8; height: 14px; border-radius: 3px; }
.ttl { display: flex; height: 14px; width: 120px; border-radius: 3px; overflow: hidden;
  background: #eef1f5; }
.ttl > div { height: 14px; }
.t-none { background: #d64545; } .t-m { background: #f0a43a; } .t-h { background: #e8d44d; }
.t-d { background: #59b36b; } .t-l { background: #3b8fb3; }
.legend span { display: inline-block; margin-right: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
  border-radius: 2px; }
.kind { font-size: 12px; padding: 1px 6px; border-radius: 8px; background: #eef1f5; }
.warn { color: #b3261e; font-weight: 600; }
.notes { color: #5a6372; font-size: 13px; }
"""
_TTL_CLASS = {"none": "t-none", "<1m": "t-m", "<1h": "t-h", "<1d": "t-d", "longer": "t-l"}


def _ttl_bar(group: GroupReport) -> str:
    total = sum(group.ttl.values())
    if not total:
        return ""
    cells = "".join(
        f'<div class="{_TTL_CLASS[b]}" style="width:{100 * n / total:.2f}%" '
        f'title="{html.escape(b)}: {n}"></div>'
        for b, n in group.ttl.items()
        if n
    )
    return f'<div class="ttl">{cells}</div>'


def render_html(report: ProfileReport) -> str:
    """One self-contained HTML page (no scripts, no external files)."""
    e = html.escape
    top = max((g.share for g in report.groups), default=0.0) or 1.0
    rows = []
    for g in report.groups:
        no_ttl = f'<span class="warn">{g.no_ttl}</span>' if g.no_ttl and g.kind != "tags" else "0"
        rows.append(
            "<tr>"
            f'<td class="name">{e(g.name)}</td><td><span class="kind">{e(g.kind)}</span></td>'
            f'<td class="num">{g.keys}{" *" if g.sampled else ""}</td>'
            f'<td class="num">{e(_approx(g, _size(g.bytes)))}</td>'
            f'<td class="share"><div class="bar"><div style="width:{100 * g.share / top:.2f}%">'
            f"</div></div>{g.share:.1%}</td>"
            f'<td class="num">{e(_size(g.avg_bytes))}</td>'
            f'<td class="num">{e(_size(g.max_bytes))}</td>'
            f'<td class="num">{no_ttl}</td><td>{_ttl_bar(g)}</td>'
            f'<td class="small">{e(_codec_text(g))}</td>'
            f'<td class="num small">{e(_saving_text(g))}</td>'
            "</tr>"
        )
    biggest = sorted(
        ((key, size, g.name) for g in report.groups for key, size in g.biggest),
        key=lambda t: -t[1],
    )[:10]
    big_rows = "".join(
        f'<tr><td class="name">{e(k)}</td><td class="num">{e(_size(s))}</td>'
        f'<td class="name">{e(n)}</td></tr>'
        for k, s, n in biggest
    )
    legend = "".join(
        f'<span><i class="{_TTL_CLASS[b]}"></i>TTL {e(b)}</span>' for b in TTL_BUCKETS
    )
    meta = "".join(f'<p class="meta">{e(line)}</p>' for line in _summary_lines(report))
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cachelayer profile</title>
<style>{_CSS}</style></head><body>
<h1>cachelayer profile</h1>{meta}
<h2>Memory by key group</h2>
<p class="legend">{legend}</p>
<table><thead><tr><th>group</th><th>kind</th><th>keys</th><th>bytes</th>
<th>share of memory</th><th>avg</th><th>max</th><th>no TTL</th><th>TTL spread</th>
<th>codec / type</th><th>zstd would save</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Biggest keys</h2>
<table><thead><tr><th>{"key (pattern)" if report.redacted else "key"}</th><th>bytes</th>
<th>group</th></tr></thead><tbody>{big_rows}</tbody></table>
<ul class="notes">{notes}<li>* sampled group: figures scaled from the inspected keys</li></ul>
</body></html>
"""
