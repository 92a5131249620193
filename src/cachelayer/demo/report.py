"""The demo's output: rich tables in the terminal and a self-contained HTML report.

The report draws its charts as inline SVG, so it opens offline with no script.
"""

from __future__ import annotations

import html as _html
import math
from typing import Any

from .cli import TITLES

COLORS = {"floor": "#888888", "none": "#d62728", "naive": "#ff7f0e", "cachelayer": "#2ca02c"}
ORDER = ("floor", "none", "naive", "cachelayer")


def _stale(p: dict[str, Any]) -> str:
    if not p["reads_after_write"]:
        return str(p["stale_reads"])
    share = 100 * p["stale_reads"] / p["reads_after_write"]
    return f"{p['stale_reads']} ({share:.1f}%)"


def _cpu_kinds(p: dict[str, Any]) -> str:
    cpu = p["cpu_ms"]
    return " / ".join(f"{cpu[k]:.2f}" if k in cpu else "-" for k in ("hit", "miss", "write"))


ROWS: list[tuple[str, Any]] = [
    ("req/s", lambda p: f"{p['rps']:,.0f}"),
    ("p50 ms", lambda p: f"{p['p50_ms']:.2f}"),
    ("p95 ms", lambda p: f"{p['p95_ms']:.2f}"),
    ("p99 ms", lambda p: f"{p['p99_ms']:.2f}"),
    ("max ms", lambda p: f"{p['max_ms']:.1f}"),
    ("DB queries/req", lambda p: f"{p['queries_per_request']:.2f}"),
    ("server CPU ms/req", lambda p: f"{p['cpu_ms']['mean']:.2f}"),
    ("  hit / miss / write", _cpu_kinds),
    ("hit ratio", lambda p: f"{100 * p['hit_ratio']:.1f}%"),
    ("stale reads (of reads after a write)", _stale),
    ("errors", lambda p: str(p["errors"])),
]


def _ratio(a: float, b: float) -> float:
    """a / b, or 0 when b is 0 (a phase with no successful request)."""
    return a / b if b else 0.0


def ratios(results: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(phase, measure, ratio) against no cache, and each cached p50 against the floor."""
    phases = results["phases"]
    out = []
    base = phases.get("none")
    for name in ("naive", "cachelayer"):
        p = phases.get(name)
        if p is None:
            continue
        if base:
            out.append((name, "throughput vs no cache", _ratio(p["rps"], base["rps"])))
            out.append((name, "p50 cut vs no cache", _ratio(base["p50_ms"], p["p50_ms"])))
            out.append((name, "p99 cut vs no cache", _ratio(base["p99_ms"], p["p99_ms"])))
        if "floor" in phases:
            floor = phases["floor"]["p50_ms"]
            out.append((name, "p50 / framework floor p50", _ratio(p["p50_ms"], floor)))
    return out


def targets(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The issue's targets for the cachelayer phase, each with whether this run met it."""
    phases = results["phases"]
    c, none, naive, floor = (phases.get(k) for k in ("cachelayer", "none", "naive", "floor"))
    out: list[tuple[str, bool, str]] = []
    if c is None:
        return out
    if none:
        cut50 = _ratio(none["p50_ms"], c["p50_ms"])
        cut99 = _ratio(none["p99_ms"], c["p99_ms"])
        out.append(("p50 cut >= 5x vs no cache", cut50 >= 5, f"{cut50:.1f}x"))
        out.append(("p99 cut >= 5x vs no cache", cut99 >= 5, f"{cut99:.1f}x"))
    if naive:
        ratio = _ratio(c["rps"], naive["rps"])
        out.append(("throughput >= the story's code", ratio >= 1, f"{ratio:.2f}x"))
    if floor:
        ratio = _ratio(c["p50_ms"], floor["p50_ms"])
        out.append(("p50 within 1.5x of the framework floor", 0 < ratio <= 1.5, f"{ratio:.2f}x"))
    out.append(("0 stale reads", c["stale_reads"] == 0, str(c["stale_reads"])))
    out.append(("0 errors", c["errors"] == 0, str(c["errors"])))
    return out


def print_tables(console: Any, results: dict[str, Any]) -> None:
    from rich.table import Table

    phases = results["phases"]
    s = results["settings"]
    names = [n for n in ORDER if n in phases]
    table = Table(
        title=f"{s['users']:,} users, {s['concurrency']} clients, {100 * s['writes']:.0f}% writes,"
        f" Zipf {s['zipf']}, {s['duration']:.0f} s per phase, store {s['store']}"
    )
    table.add_column("")
    for name in names:
        table.add_column(TITLES[name], justify="right")
    for label, cell in ROWS:
        table.add_row(label, *(cell(phases[n]) if n != "floor" or label in _FLOOR_ROWS else "—"
                               for n in names))  # fmt: skip
    console.print(table)
    ratio_table = Table(title="Ratios (same run, same workload and seed)")
    ratio_table.add_column("phase")
    ratio_table.add_column("measure")
    ratio_table.add_column("ratio", justify="right")
    for name, measure, value in ratios(results):
        ratio_table.add_row(TITLES[name], measure, f"{value:.2f}x")
    console.print(ratio_table)
    for label, ok, shown in targets(results):
        mark = "[green]met[/]" if ok else "[red]not met[/]"
        console.print(f"  {mark:<20} {label}: {shown}")


_FLOOR_ROWS = {"req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "server CPU ms/req"}


def print_ramp(console: Any, results: dict[str, Any]) -> None:
    from rich.table import Table

    ramp = results["ramp"]
    bound = ramp["p99_bound_ms"]
    table = Table(title=f"Ramp: req/s (p99 ms) per number of clients; capacity = best req/s "
                        f"with p99 <= {bound:.0f} ms")  # fmt: skip
    table.add_column("clients", justify="right")
    sides = list(ramp["sides"])
    for side in sides:
        table.add_column(TITLES[side], justify="right")
    levels = sorted({s["concurrency"] for v in ramp["sides"].values() for s in v["steps"]})
    for level in levels:
        cells = []
        for side in sides:
            step = next(
                (s for s in ramp["sides"][side]["steps"] if s["concurrency"] == level), None
            )
            cells.append(f"{step['rps']:,.0f} ({step['p99_ms']:.0f})" if step else "")
        table.add_row(str(level), *cells)
    table.add_row(
        "capacity",
        *(
            f"{v['capacity']['rps']:,.0f}" if v["capacity"] else "none"
            for v in ramp["sides"].values()
        ),
    )
    console.print(table)
    caps = {k: v["capacity"]["rps"] for k, v in ramp["sides"].items() if v["capacity"]}
    if "none" in caps:
        for side, cap in caps.items():
            if side != "none":
                console.print(f"  {TITLES[side]}: {cap / caps['none']:.1f}x the uncached capacity")
        if "cachelayer" in caps:
            ok = caps["cachelayer"] >= 5 * caps["none"]
            mark = "[green]met[/]" if ok else "[red]not met[/]"
            console.print(f"  {mark:<20} cachelayer capacity >= 5x the uncached capacity")


# -- HTML ------------------------------------------------------------------------------------


def _chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    ymax: float | None = None,
) -> str:
    """A line chart as inline SVG."""
    w, h, left, bottom, top, right = 640, 320, 60, 40, 30, 20
    points = [pt for pts in series.values() for pt in pts if not logx or pt[0] > 0]
    if not points:
        return ""
    fx = (lambda x: math.log10(x)) if logx else (lambda x: x)
    xs = [fx(x) for x, _ in points]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = ymax if ymax is not None else max(y for _, y in points) * 1.05 or 1

    def px(x: float) -> float:
        return left + (fx(x) - x0) / (x1 - x0) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - y / y1 * (h - bottom - top)

    parts = [
        f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-weight="bold">{_html.escape(title)}'
        "</text>",
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#444"/>',
        f'<text x="{w / 2}" y="{h - 5}" text-anchor="middle">{_html.escape(xlabel)}</text>',
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
        f"{_html.escape(ylabel)}</text>",
    ]
    ticks = (
        [10**k for k in range(math.floor(x0), math.ceil(x1) + 1)]
        if logx
        else [x0 + i * (x1 - x0) / 5 for i in range(6)]
    )
    for t in ticks:
        if fx(t) < x0 - 1e-9 or fx(t) > x1 + 1e-9:
            continue
        label = f"{t:.3g}"
        parts.append(
            f'<text x="{px(t):.1f}" y="{h - bottom + 15}" text-anchor="middle" '
            f'font-size="11">{label}</text>'
        )
    for i in range(5):
        y = y1 * i / 4
        parts.append(
            f'<text x="{left - 5}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="11">'
            f"{y:,.3g}</text>"
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{w - right}" y2="{py(y):.1f}" '
            'stroke="#eee"/>'
        )
    for k, (name, pts) in enumerate(series.items()):
        pts = [p for p in pts if not logx or p[0] > 0]
        if not pts:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        color = COLORS.get(name, "#1f77b4")
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        parts.append(
            f'<text x="{w - right - 5}" y="{top + 14 + 14 * k}" text-anchor="end" '
            f'fill="{color}" font-size="12">{_html.escape(TITLES.get(name, name))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table_html(results: dict[str, Any]) -> str:
    phases = results["phases"]
    names = [n for n in ORDER if n in phases]
    head = "".join(f"<th>{_html.escape(TITLES[n])}</th>" for n in names)
    rows = []
    for label, cell in ROWS:
        cells = "".join(
            f"<td>{_html.escape(cell(phases[n]) if n != 'floor' or label in _FLOOR_ROWS else '—')}"
            "</td>"
            for n in names
        )
        rows.append(f"<tr><th>{_html.escape(label)}</th>{cells}</tr>")
    targets_met = targets(results)
    ratio_rows = "".join(
        f"<tr><td>{_html.escape(TITLES[n])}</td><td>{_html.escape(m)}</td><td>{v:.2f}x</td></tr>"
        for n, m, v in ratios(results)
    )
    target_rows = "".join(
        f"<tr><td>{_html.escape(label)}</td><td class={'ok' if ok else 'bad'}>"
        f"{'met' if ok else 'not met'}</td><td>{_html.escape(value)}</td></tr>"
        for label, ok, value in targets_met
    )
    return (
        f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"
        f"<h2>Ratios</h2><table>{ratio_rows}</table>"
        + (f"<h2>Targets</h2><table>{target_rows}</table>" if targets_met else "")
    )


def html(results: dict[str, Any]) -> str:
    """The whole report as one HTML page with no external resource."""
    s = results["settings"]
    body = [
        "<h1>cachelayer demo</h1>",
        f"<p>{_html.escape(results['started'])}: {s['users']:,} users, "
        f"{s['concurrency']} clients, {100 * s['writes']:.0f}% writes, Zipf {s['zipf']}, "
        f"seed {s['seed']}, store <code>{_html.escape(s['store'])}</code>, database "
        f"<code>{_html.escape(s['database'])}</code>, Python {results['machine']['python']}, "
        f"{results['machine']['cpus']} CPUs.</p>",
    ]
    phases = results["phases"]
    if phases:
        body.append(_table_html(results))
        cdf = {
            n: [(ms, i / 200) for i, ms in enumerate(phases[n]["cdf_ms"])]
            for n in ORDER
            if n in phases
        }
        body.append(_chart("Latency CDF", cdf, "latency, ms (log)", "fraction", True, 1.0))
        # Samples shorter than half a second (the last one) are too noisy to draw.
        whole = {n: [pt for pt in phases[n]["timeline"] if pt["dt"] >= 0.5] for n in phases}
        timeline = {
            n: [(pt["t"], pt["requests"] / pt["dt"]) for pt in whole[n]]
            for n in ORDER
            if n in phases
        }
        xlabel = "seconds (warm-up before 0)"
        body.append(_chart("Throughput over time", timeline, xlabel, "requests per second"))
        hits = {
            n: [(pt["t"], pt["hit_ratio"]) for pt in whole[n]]
            for n in ("naive", "cachelayer")
            if n in phases
        }
        body.append(_chart("Hit ratio over time", hits, xlabel, "hit ratio", ymax=1.0))
    if "ramp" in results:
        ramp = results["ramp"]
        rps = {
            k: [(s["concurrency"], s["rps"]) for s in v["steps"]] for k, v in ramp["sides"].items()
        }
        p99 = {
            k: [(s["concurrency"], s["p99_ms"]) for s in v["steps"]]
            for k, v in ramp["sides"].items()
        }
        caps = "".join(
            f"<li>{_html.escape(TITLES[k])}: "
            f"{(v['capacity']['rps'] if v['capacity'] else 0):,.0f} req/s</li>"
            for k, v in ramp["sides"].items()
        )
        body.append(f"<h2>Ramp (p99 bound {ramp['p99_bound_ms']:.0f} ms)</h2><ul>{caps}</ul>")
        body.append(_chart("Throughput by clients", rps, "clients (log)", "req/s", True))
        body.append(_chart("p99 latency by clients", p99, "clients (log)", "p99 ms", True))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}th:first-child{text-align:left}"
        ".ok{color:#2ca02c}.bad{color:#d62728}svg{display:block;margin:1.5em 0}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cachelayer demo</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
