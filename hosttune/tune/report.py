"""`hosttune tune`'s console table and HTML report: every candidate's throughput and p99 with their
95 % confidence intervals, the Pareto front, the default and the chosen point; then bench's report
of the default and the chosen candidate (latency CDFs, per-round bars, the system state)."""

from __future__ import annotations

import html
from typing import Any

from hosttune.bench import report as bench_report


def _fmt(m: dict[str, Any] | None, digits: int) -> str:
    if not m:
        return "-"
    ci = f" +-{m['ci95']:.{digits}f}" if m.get("ci95") is not None else ""
    return f"{m['mean']:.{digits}f}{ci}"


def _status(c: dict[str, Any], result: dict[str, Any]) -> str:
    d = result["decision"]
    marks = []
    if c["default"]:
        marks.append("default")
    if c["index"] == d["chosen"]:
        marks.append("CHOSEN")
    if c["pareto"]:
        marks.append("pareto")
    if c.get("left"):
        marks.append(c["left"])
    return ", ".join(marks)


def _effective(e: dict[str, Any]) -> str:
    """A candidate instance's settings as its compiled model reports them (bench's worker), else as
    its server's banner does (streams, nireq)."""
    if e.get("error"):
        return f"read-back failed: {e['error']}"
    if "threads" in e:
        return (f"streams {e.get('streams')}, threads {e.get('threads')}, nireq {e.get('nireq')}, "
                f"{e.get('execution_precision')}")
    served = e.get("served") or {}
    return f"streams {served.get('streams')}, nireq {served.get('nireq')} (server)"


def _workload(wl: dict[str, Any]) -> str:
    if wl.get("rate"):
        return f"{wl['rate']:g} requests/s (open loop, up to {wl['concurrency']} connections)"
    return f"concurrency {wl['concurrency']}"


def console(result: dict[str, Any]) -> str:
    obj = result["objective"]
    wl = obj["workload"]
    slo = f", p99 SLO {obj['slo_p99_ms']:g} ms" if obj.get("slo_p99_ms") is not None else ""
    lines = [f"hosttune tune: {result['instance']} CPUs {result['cpus_list']} on {result['hostname']} "
             f"(class {result['class']}): objective {obj['name']}{slo}, {_workload(wl)}, "
             f"{'binary' if wl['binary'] else 'JSON'} requests; {len(result['candidates'])} candidates, "
             f"{result['search']['rounds']} round(s) of {result['search']['round_s']:.2f} s, "
             f"{result['wall_s']:.1f} s of a {result['budget_s']:g} s budget"]
    w = max(10, *(len(c["label"]) for c in result["candidates"]))
    head = f"{'candidate':<{w}} {'rounds':>6} {'thr/s (95% CI)':>18} {'p99 ms (95% CI)':>18}  status"
    lines += [head, "-" * len(head)]
    for c in result["candidates"]:
        lines.append(f"{c['label']:<{w}} {c['rounds']:>6} {_fmt(c['throughput'], 1):>18} {_fmt(c['p99_ms'], 3):>18}  "
                     f"{_status(c, result)}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    d = result["decision"]
    lines.append(f"decision: {d['decision']}: {d['reason']}")
    return "\n".join(lines)


def svg_pareto(cands: list[dict[str, Any]], chosen: int, width: int = 960, height: int = 440) -> str:
    """Throughput (y) against p99 (x) of every measured candidate with 95 % CI bars on both axes;
    the Pareto front joined by a line, the default a square, the chosen point ringed."""
    pts = [c for c in cands if c["throughput"] and c["p99_ms"]]
    if not pts:
        return ""
    xs = [c["p99_ms"]["mean"] + (c["p99_ms"].get("ci95") or 0) for c in pts]
    x0 = min(c["p99_ms"]["mean"] - (c["p99_ms"].get("ci95") or 0) for c in pts)
    ys = [c["throughput"]["mean"] + (c["throughput"].get("ci95") or 0) for c in pts]
    x_lo, x_hi = max(0.0, x0 * 0.9), max(xs) * 1.1
    y_hi = max(ys) * 1.15
    parts, sx, sy = bench_report._svg_frame(width, height, x_lo, x_hi, 0, y_hi, "p99 latency (ms)",
                                            "throughput (inferences/s)", legend=300)

    def cx(v: float) -> float:  # a confidence interval wider than the axis ends at its edge
        return sx(min(max(v, x_lo), x_hi))

    def cy(v: float) -> float:
        return sy(min(max(v, 0.0), y_hi))

    front = sorted((c for c in pts if c["pareto"]), key=lambda c: c["p99_ms"]["mean"])
    if len(front) > 1:
        line = " ".join(f"{sx(c['p99_ms']['mean']):.1f},{sy(c['throughput']['mean']):.1f}" for c in front)
        parts.append(f'<polyline class="front" fill="none" stroke="#888" stroke-dasharray="4 3" points="{line}"/>')
    for k, c in enumerate(pts):
        color = bench_report.COLORS[k % len(bench_report.COLORS)]
        x, y = c["p99_ms"]["mean"], c["throughput"]["mean"]
        ex, ey = c["p99_ms"].get("ci95") or 0, c["throughput"].get("ci95") or 0
        parts.append(f'<line x1="{cx(x - ex):.1f}" y1="{sy(y):.1f}" x2="{cx(x + ex):.1f}" y2="{sy(y):.1f}" '
                     f'stroke="{color}"/><line x1="{sx(x):.1f}" y1="{cy(y - ey):.1f}" x2="{sx(x):.1f}" '
                     f'y2="{cy(y + ey):.1f}" stroke="{color}"/>')
        tip = (f"<title>{html.escape(c['label'])}: {y:.1f}/s +-{ey:.1f}, p99 {x:.3f} ms +-{ex:.3f}, "
               f"{c['rounds']} rounds</title>")
        if c["default"]:
            parts.append(f'<rect class="point default" x="{sx(x) - 5:.1f}" y="{sy(y) - 5:.1f}" width="10" height="10" '
                         f'fill="{color}">{tip}</rect>')
        else:
            parts.append(f'<circle class="point" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{color}">{tip}</circle>')
        if c["index"] == chosen:
            parts.append(f'<circle class="chosen" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="11" fill="none" '
                         f'stroke="#000" stroke-width="2"/>')
    bench_report._legend(parts, width, [("[default] " if c["default"] else "") + c["label"] for c in pts], legend=300)
    parts.append("</svg>")
    return "".join(parts)


def html_report(result: dict[str, Any]) -> str:
    d = result["decision"]
    obj = result["objective"]
    chosen = next(c for c in result["candidates"] if c["index"] == d["chosen"])
    default = next(c for c in result["candidates"] if c["default"])
    slo = f", p99 SLO {obj['slo_p99_ms']:g} ms" if obj.get("slo_p99_ms") is not None else ""
    parts = [f"<p id=\"decision\"><b>{html.escape(d['decision'])}</b>: {html.escape(d['reason'])}</p>",
             f"<p>Instance {html.escape(result['instance'])} (CPUs {html.escape(result['cpus_list'])}) on "
             f"{html.escape(result['hostname'])}, class {html.escape(result['class'])}; objective "
             f"{html.escape(obj['name'])}{html.escape(slo)}, {html.escape(_workload(obj['workload']))} "
             f"({'binary' if obj['workload']['binary'] else 'JSON'} requests); {len(result['candidates'])} "
             f"candidates in {result['search']['rounds']} interleaved round(s) of {result['search']['round_s']:.2f} s; "
             f"{result['wall_s']:.1f} s of a {result['budget_s']:g} s budget. Significance: "
             f"bench compare's test at alpha {d['alpha']:g} / {max(1, d['compared_among'])} candidates.</p>",
             "<h2>Pareto front: throughput against p99 (95 % confidence intervals)</h2>",
             svg_pareto(result["candidates"], d["chosen"]), "<h2>Candidates</h2>"]
    rows = []
    for c in result["candidates"]:
        eff = "; ".join(_effective(e) for e in c["effective"])
        rows.append([c["label"], c["rounds"], _fmt(c["throughput"], 1), _fmt(c["p99_ms"], 3), eff or "-",
                     _status(c, result)])
    parts.append(bench_report._table(rows, ["candidate", "rounds", "throughput/s (95% CI)", "p99 ms (95% CI)",
                                            "effective (read back from the compiled model)", "status"]))
    if result["notes"]:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"]) + "</ul>")
    import yaml

    parts.append("<h2>Policy overlay (-o)</h2><pre>" + html.escape(yaml.safe_dump(
        {"format": "hosttune.tune-overlay/1", "classes": result["overlay"]}, sort_keys=False)) + "</pre>")
    docs = [("default", default["result"])]
    if chosen is not default:
        docs.append(("chosen", chosen["result"]))
    docs = [(label, doc) for label, doc in docs if doc]
    title = f"hosttune tune: {result['instance']} on {result['hostname']}"
    return bench_report.html_report(docs, title=title, prelude="".join(parts))
