"""The demo's output: rich tables in the terminal and a self-contained HTML report.

The charts are drawn with matplotlib and embedded as inline SVG: the page needs no
script and no network, and opens the same in any browser. matplotlib rather than a
JavaScript library because it is maintained, typed, and renders here, at the end of the
run, so nothing has to be inlined into the page but the pictures (tens of kB in all).
"""

from __future__ import annotations

import html as _html
import io
import math
from typing import TYPE_CHECKING, Any

from .cli import TITLES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = {
    "floor": "#7f7f7f",
    "none": "#d62728",
    "naive": "#ff7f0e",
    "careful": "#9467bd",
    "cachelayer": "#2ca02c",
}
ORDER = ("floor", "none", "naive", "careful", "cachelayer")
CACHED = ("naive", "careful", "cachelayer")


def _stale(p: dict[str, Any]) -> str:
    if not p["reads_after_write"]:
        return str(p["stale_reads"])
    share = 100 * p["stale_reads"] / p["reads_after_write"]
    return f"{p['stale_reads']} of {p['reads_after_write']} ({share:.1f}%)"


def _cpu_kinds(p: dict[str, Any]) -> str:
    cpu = p["cpu_ms"]
    return " / ".join(f"{cpu[k]:.2f}" if k in cpu else "-" for k in ("hit", "miss", "write"))


def _warm_cell(p: dict[str, Any]) -> str:
    warm = p.get("warm")
    if not warm:
        return "-"
    return f"{warm.get('loaded', 0):,} in {warm['seconds']:.0f} s"


ROWS: list[tuple[str, Any]] = [
    ("req/s answered", lambda p: f"{p['rps']:,.0f}"),
    ("p50 ms", lambda p: f"{p['p50_ms']:.2f}"),
    ("p90 ms", lambda p: f"{p['p90_ms']:.2f}"),
    ("p99 ms", lambda p: f"{p['p99_ms']:.2f}"),
    ("p99.9 ms", lambda p: f"{p['p999_ms']:.1f}"),
    ("max ms", lambda p: f"{p['max_ms']:.1f}"),
    ("DB queries/req", lambda p: f"{p['queries_per_request']:.2f}"),
    ("server CPU ms/req", lambda p: f"{p['cpu_ms']['mean']:.2f}"),
    ("  hit / miss / write", _cpu_kinds),
    ("hit ratio", lambda p: f"{100 * p['hit_ratio']:.1f}%"),
    ("stale reads (of reads after a write)", _stale),
    ("errors", lambda p: str(p["errors"])),
    ("warm-up: profiles loaded", _warm_cell),
    ("unmeasured traffic first, s", lambda p: f"{p['settle_seconds']:.0f}"),
]
_FLOOR_ROWS = {
    "req/s answered", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
    "server CPU ms/req", "unmeasured traffic first, s",
}  # fmt: skip


def _ratio(a: float, b: float) -> float:
    """a / b, or 0 when b is 0 (a phase with no successful request)."""
    return a / b if b else 0.0


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def headline(results: dict[str, Any]) -> str:
    """The one sentence at the top: the measured ratios, same traffic."""
    phases = results["phases"]
    none, cl = phases.get("none"), phases.get("cachelayer")
    if not none or not cl:
        return ""
    rate = results.get("rate") or cl["rps"]
    parts = [
        f"At {rate:,.0f} requests/s",
        f", cachelayer took p50 from {_ms(none['p50_ms'])} ms to {_ms(cl['p50_ms'])} ms",
        f" ({_ratio(none['p50_ms'], cl['p50_ms']):.0f}x)",
        f", p99 from {_ms(none['p99_ms'])} ms to {_ms(cl['p99_ms'])} ms",
        f" ({_ratio(none['p99_ms'], cl['p99_ms']):.1f}x)",
        f" and DB queries per request from {none['queries_per_request']:.1f}"
        f" to {cl['queries_per_request']:.2f}",
        f", with {cl['stale_reads']} stale reads",
    ]
    naive, careful = phases.get("naive"), phases.get("careful")
    stale = []
    if naive and naive["reads_after_write"]:
        share = 100 * naive["stale_reads"] / naive["reads_after_write"]
        stale.append(f"the story's code served {share:.0f}% of reads after a write stale")
    if careful:
        stale.append(f"the careful reader {careful['stale_reads']}")
    if stale:
        parts.append(" where " + " and ".join(stale))
    return "".join(parts) + "."


def ratios(results: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(phase, measure, ratio) against no cache, and each cached p50 against the floor."""
    phases = results["phases"]
    out = []
    base = phases.get("none")
    for name in CACHED:
        p = phases.get(name)
        if p is None:
            continue
        if base:
            out.append((name, "p50 cut vs no cache", _ratio(base["p50_ms"], p["p50_ms"])))
            out.append((name, "p99 cut vs no cache", _ratio(base["p99_ms"], p["p99_ms"])))
            out.append(
                (
                    name,
                    "DB queries/req vs no cache",
                    _ratio(p["queries_per_request"], base["queries_per_request"]),
                )
            )
        if "floor" in phases:
            floor = phases["floor"]["p50_ms"]
            out.append((name, "p50 / framework floor p50", _ratio(p["p50_ms"], floor)))
    return out


def targets(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The issue's targets for the cachelayer phase, each with whether this run met it."""
    phases = results["phases"]
    c, none, careful, floor = (phases.get(k) for k in ("cachelayer", "none", "careful", "floor"))
    out: list[tuple[str, bool, str]] = []
    if c is None:
        return out
    if none:
        cut50 = _ratio(none["p50_ms"], c["p50_ms"])
        cut99 = _ratio(none["p99_ms"], c["p99_ms"])
        queries = _ratio(c["queries_per_request"], none["queries_per_request"])
        out.append(("p50 >= 10x lower than no cache", cut50 >= 10, f"{cut50:.1f}x"))
        out.append(("p99 >= 3x lower than no cache", cut99 >= 3, f"{cut99:.1f}x"))
        out.append(("DB queries/req <= 0.2x no cache", queries <= 0.2, f"{queries:.3f}x"))
    if floor:
        ratio = _ratio(c["p50_ms"], floor["p50_ms"])
        out.append(("p50 within 2x of the framework floor", 0 < ratio <= 2, f"{ratio:.2f}x"))
    if careful:
        ok = (
            c["rps"] >= 0.99 * careful["rps"]
            and c["p50_ms"] <= careful["p50_ms"]
            and c["p99_ms"] <= careful["p99_ms"]
        )
        shown = (
            f"req/s {c['rps']:,.0f} vs {careful['rps']:,.0f}, p50 {_ms(c['p50_ms'])} vs "
            f"{_ms(careful['p50_ms'])} ms, p99 {_ms(c['p99_ms'])} vs {_ms(careful['p99_ms'])} ms"
        )
        out.append(("at least the careful reader's throughput and latency", ok, shown))
    out.append(("0 stale reads", c["stale_reads"] == 0, str(c["stale_reads"])))
    out.append(("0 errors", c["errors"] == 0, str(c["errors"])))
    return out


def ramp_targets(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The ramp's targets: 4x the uncached capacity, at least the careful reader's."""
    caps = _capacities(results)
    out: list[tuple[str, bool, str]] = []
    c = caps.get("cachelayer")
    if c is None:
        return out
    if caps.get("none"):
        ratio = c / caps["none"]
        out.append(("capacity >= 4x the uncached capacity", ratio >= 4, f"{ratio:.1f}x"))
    if caps.get("careful"):
        ratio = c / caps["careful"]
        out.append(("capacity >= the careful reader's", ratio >= 1, f"{ratio:.2f}x"))
    sides = results["ramp"]["sides"]["cachelayer"]["steps"]
    stale = sum(s["stale_reads"] for s in sides)
    errors = sum(s["errors"] for s in sides if s["sustained"])
    out.append(("0 stale reads", stale == 0, str(stale)))
    out.append(("0 errors within the capacity", errors == 0, str(errors)))
    return out


def _capacities(results: dict[str, Any]) -> dict[str, float]:
    sides = results["ramp"]["sides"]
    return {k: v["capacity"]["rate"] for k, v in sides.items() if v["capacity"]}


def _settings_line(results: dict[str, Any]) -> str:
    s = results["settings"]
    loop = (
        f"{s['concurrency']} closed-loop clients"
        if s["loop"] == "closed"
        else f"open loop at {results.get('rate', 0):,.0f} req/s"
    )
    probe = results.get("probe")
    if probe and s["loop"] == "open" and "rate" in results:
        loop += f" ({100 * s['load']:.0f}% of the uncached capacity, {probe['rps']:,.0f} req/s)"
    return (
        f"{s['users']:,} users, {loop}, {100 * s['writes']:.0f}% writes, Zipf {s['zipf']}, "
        f"{s['duration']:g} s measured per phase, warm-up {s['warm']:,} users, "
        f"{s['workers']} worker(s) x {s['threads']} threads, store {s['store']}"
    )


def print_tables(console: Any, results: dict[str, Any]) -> None:
    from rich.table import Table

    phases = results["phases"]
    names = [n for n in ORDER if n in phases]
    sentence = headline(results)
    if sentence:
        console.print(f"\n[bold]{sentence}[/]\n")
    table = Table(title=_settings_line(results))
    table.add_column("")
    for name in names:
        table.add_column(TITLES[name], justify="right")
    for label, cell in ROWS:
        table.add_row(label, *(cell(phases[n]) if n != "floor" or label in _FLOOR_ROWS else "-"
                               for n in names))  # fmt: skip
    console.print(table)
    ratio_table = Table(title="Ratios (same run, same traffic)")
    ratio_table.add_column("phase")
    ratio_table.add_column("measure")
    ratio_table.add_column("ratio", justify="right")
    for name, measure, value in ratios(results):
        ratio_table.add_row(TITLES[name], measure, f"{value:.2f}x")
    console.print(ratio_table)
    _print_targets(console, targets(results))


def _print_targets(console: Any, rows: list[tuple[str, bool, str]]) -> None:
    for label, ok, shown in rows:
        mark = "[green]met    [/]" if ok else "[red]not met[/]"
        console.print(f"  {mark}  {label}: {shown}")


def print_ramp(console: Any, results: dict[str, Any]) -> None:
    from rich.table import Table

    ramp = results["ramp"]
    bound = ramp["p99_bound_ms"]
    table = Table(
        title=f"Ramp: p99 ms (req/s answered) per offered rate; capacity = the highest rate "
        f"with p99 <= {bound:.0f} ms, no error, 95% answered"
    )
    table.add_column("offered req/s", justify="right")
    sides = list(ramp["sides"])
    for side in sides:
        table.add_column(TITLES[side], justify="right")
    rates = sorted({s["rate"] for v in ramp["sides"].values() for s in v["steps"]})
    for rate in rates:
        cells = []
        for side in sides:
            step = next((s for s in ramp["sides"][side]["steps"] if s["rate"] == rate), None)
            mark = "" if step is None or step["sustained"] else " x"
            cells.append(f"{step['p99_ms']:,.1f} ({step['rps']:,.0f}){mark}" if step else "")
        table.add_row(f"{rate:,.0f}", *cells)
    caps = _capacities(results)
    table.add_row("capacity", *(f"{caps[s]:,.0f}" if s in caps else "none" for s in sides))
    console.print(table)
    if caps.get("none"):
        for side, cap in caps.items():
            if side != "none":
                console.print(f"  {TITLES[side]}: {cap / caps['none']:.1f}x the uncached capacity")
    _print_targets(console, ramp_targets(results))


# -- HTML ------------------------------------------------------------------------------------


def _figure(width: float = 9.0, height: float = 3.6) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element (text kept as text)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "cachelayer-demo"}):
        fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _plain(value: float, _: object = None) -> str:
    """Tick labels as people write numbers: 0.5, 2, 10, 1,000; never 1.37e+03."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.10g}" if abs(value) >= 1 else f"{value:.3g}"


def _plain_axis(ax: Axes, log_y: bool = False) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.grid(True, which="major", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(fig: Figure, ax: Axes) -> None:
    """One legend under the plot, where it covers no line."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(handles)),
                   frameon=False)  # fmt: skip


def _nines(q: float) -> float:
    return -math.log10(max(1e-5, 1 - q))


def _percentile_chart(results: dict[str, Any]) -> str:
    """Latency by percentile on a "nines" axis: the tail is as wide as the middle."""
    from matplotlib.ticker import FixedLocator

    phases = results["phases"]
    fig = _figure(9, 4.2)
    ax = fig.add_subplot()
    for name in ORDER:
        if name not in phases:
            continue
        points = [(q, ms) for q, ms in phases[name]["spectrum_ms"] if q < 1 and ms > 0]
        ax.plot([_nines(q) for q, _ in points], [ms for _, ms in points], marker="o",
                markersize=3, color=COLORS[name], label=TITLES[name])  # fmt: skip
    _plain_axis(ax, log_y=True)
    ticks = [(0.0, "0%"), (0.5, "50%"), (0.9, "90%"), (0.99, "99%"), (0.999, "99.9%"),
             (0.9999, "99.99%")]  # fmt: skip
    ax.xaxis.set_major_locator(FixedLocator([_nines(q) for q, _ in ticks]))
    ax.set_xticklabels([label for _, label in ticks])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title("Latency by percentile, from the intended send time", loc="left")
    _legend(fig, ax)
    return _svg(fig)


def _timeline_chart(results: dict[str, Any], key: str, title: str, ylabel: str) -> str:
    """One measure per second from each phase's first request; the measured window is
    the solid part of each line."""
    phases = results["phases"]
    names = [n for n in ORDER if n in phases and n != "floor"]
    if key == "hit_ratio":
        names = [n for n in names if n in CACHED]
    if not names:
        return ""
    fig = _figure()
    ax = fig.add_subplot()
    for name in names:
        points = [p for p in phases[name]["timeline"] if p["dt"] >= 0.5]
        before = [p for p in points if not p["measured"]]
        during = [p for p in points if p["measured"]]
        if before and during:
            before.append(during[0])  # no gap between the two parts
        scale = 100.0 if key == "hit_ratio" else 1.0
        for part, style, label in ((before, ":", None), (during, "-", TITLES[name])):
            if part:
                ax.plot([p["t"] for p in part], [p[key] * scale for p in part],
                        linestyle=style, color=COLORS[name], label=label)  # fmt: skip
    _plain_axis(ax, log_y=key != "hit_ratio")
    if key == "hit_ratio":
        ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds from the phase's first request (dotted: not measured)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    _legend(fig, ax)
    return _svg(fig)


def _cost_chart(results: dict[str, Any]) -> str:
    """DB queries and server CPU per request, side by side, per phase."""
    phases = results["phases"]
    names = [n for n in ORDER if n in phases and n != "floor"]
    if not names:
        return ""
    from matplotlib.ticker import FuncFormatter

    fig = _figure(9, 3.0)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in (
        (axes[0], "queries", "DB queries per request"),
        (axes[1], "cpu", "server CPU ms per request"),
    ):
        values = [
            phases[n]["queries_per_request"] if key == "queries" else phases[n]["cpu_ms"]["mean"]
            for n in names
        ]
        bars = ax.barh([TITLES[n] for n in names], values, color=[COLORS[n] for n in names])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=9)
        ax.set_title(title, loc="left")
        ax.set_xlim(0, max([*values, 0.001]) * 1.2)
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))  # the y axis holds the names
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].invert_yaxis()  # shared: the phases top to bottom in the story's order
    return _svg(fig)


def _ramp_chart(results: dict[str, Any]) -> str:
    ramp = results["ramp"]
    fig = _figure(9, 4.2)
    ax = fig.add_subplot()
    for name, side in ramp["sides"].items():
        steps = side["steps"]
        ax.plot([s["rate"] for s in steps], [max(s["p99_ms"], 0.01) for s in steps],
                marker="o", markersize=3, color=COLORS[name], label=TITLES[name])  # fmt: skip
        if side["capacity"]:
            cap = side["capacity"]
            ax.plot([cap["rate"]], [cap["p99_ms"]], marker="*", markersize=12, color=COLORS[name])
    ax.axhline(ramp["p99_bound_ms"], color="#444", linestyle="--", linewidth=1,
               label=f"p99 bound, {ramp['p99_bound_ms']:g} ms")  # fmt: skip
    _plain_axis(ax, log_y=True)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(FuncFormatter(_plain))
    ax.tick_params(axis="x", which="minor", labelsize=8)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("offered rate, requests/s (log scale; a star: the capacity)")
    ax.set_ylabel("p99 ms (log scale)")
    ax.set_title("p99 latency by arrival rate", loc="left")
    _legend(fig, ax)
    return _svg(fig)


def _table_html(results: dict[str, Any]) -> str:
    phases = results["phases"]
    names = [n for n in ORDER if n in phases]
    head = "".join(f"<th>{_html.escape(TITLES[n])}</th>" for n in names)
    rows = []
    for label, cell in ROWS:
        cells = "".join(
            f"<td>{_html.escape(cell(phases[n]) if n != 'floor' or label in _FLOOR_ROWS else '-')}"
            "</td>"
            for n in names
        )
        rows.append(f"<tr><th>{_html.escape(label)}</th>{cells}</tr>")
    ratio_rows = "".join(
        f"<tr><td>{_html.escape(TITLES[n])}</td><td>{_html.escape(m)}</td><td>{v:.2f}x</td></tr>"
        for n, m, v in ratios(results)
    )
    return (
        f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"
        + _targets_html(targets(results))
        + f"<h2>Ratios</h2><table>{ratio_rows}</table>"
    )


def _targets_html(rows: list[tuple[str, bool, str]]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{_html.escape(label)}</td><td class={'ok' if ok else 'bad'}>"
        f"{'met' if ok else 'not met'}</td><td>{_html.escape(value)}</td></tr>"
        for label, ok, value in rows
    )
    return f"<h2>Targets</h2><table>{body}</table>"


def _ramp_html(results: dict[str, Any]) -> str:
    ramp = results["ramp"]
    sides = list(ramp["sides"])
    head = "".join(f"<th>{_html.escape(TITLES[s])}</th>" for s in sides)
    rates = sorted({s["rate"] for v in ramp["sides"].values() for s in v["steps"]})
    rows = []
    for rate in rates:
        cells = []
        for side in sides:
            step = next((s for s in ramp["sides"][side]["steps"] if s["rate"] == rate), None)
            text = f"{step['p99_ms']:,.1f}" if step else ""
            cls = "" if step is None or step["sustained"] else " class=bad"
            cells.append(f"<td{cls}>{text}</td>")
        rows.append(f"<tr><th>{rate:,.0f}</th>{''.join(cells)}</tr>")
    caps = _capacities(results)
    cap_cells = "".join(
        f"<td>{caps[s]:,.0f}</td>" if s in caps else "<td>none</td>" for s in sides
    )
    rows.append(f"<tr><th>capacity, req/s</th>{cap_cells}</tr>")
    return (
        f"<h2>Capacity (p99 bound {ramp['p99_bound_ms']:g} ms)</h2>"
        "<p>p99 ms per offered rate (red: not sustained).</p>"
        f"<table><tr><th>offered req/s</th>{head}</tr>{''.join(rows)}</table>"
        + _targets_html(ramp_targets(results))
        + _ramp_chart(results)
    )


def html(results: dict[str, Any]) -> str:
    """The whole report as one HTML page with no external resource."""
    body = ["<h1>cachelayer demo</h1>"]
    phases = results["phases"]
    sentence = headline(results)
    if sentence:
        body.append(f"<p class=lead>{_html.escape(sentence)}</p>")
    started, line = results["started"], _settings_line(results)
    body.append(
        f"<p class=meta>{_html.escape(started)}: {_html.escape(line)}"
        f", database <code>{_html.escape(results['settings']['database'])}</code>, Python "
        f"{results['machine']['python']}, {results['machine']['cpus']} CPUs.</p>"
    )
    if phases:
        body.append(_table_html(results))
        body.append(_percentile_chart(results))
        body.append(_cost_chart(results))
        body.append(
            _timeline_chart(
                results,
                "hit_ratio",
                "Hit ratio over time, from the first request (after the warm-up)",
                "hit ratio, %",
            )
        )
        body.append(_timeline_chart(results, "p99_ms", "p99 latency per second", "p99 ms (log)"))
    if "ramp" in results:
        body.append(_ramp_html(results))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        ".lead{font-size:1.25em;line-height:1.4;font-weight:600}.meta{color:#555}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
        ".ok{color:#2ca02c}.bad{color:#d62728}svg{display:block;margin:1.5em 0;"
        "max-width:100%;height:auto}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cachelayer demo</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
