"""Console tables and the self-contained HTML report (inline SVG charts) of bench results."""

from __future__ import annotations

import html
import math
from typing import Any

from hosttune import cpulist
from hosttune.bench import stats

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]


def _cpus(value: Any) -> str:
    return cpulist.format(value) if value else "-"


def console(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    judge = cfg.get("judge") or "p99"
    lines = [f"hosttune bench ({doc['kind']}{', ' + doc['label'] if doc.get('label') else ''}): "
             f"{cfg['runs']} run(s) x {cfg['duration_s']} s after {cfg['warmup_s']} s warmup, "
             f"{'pinned' if cfg['pinned'] else 'unpinned'}, noise "
             f"{_noise(cfg['noise'])}, verdict judges throughput and {judge}"]
    w = max([10] + [len(i["name"]) for i in doc["instances"]])
    head = (f"{'instance':<{w}} {'run':>3} {'count':>7} {'thr/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'p99.9 ms':>8} {'max ms':>8}")
    lines.append(head)
    lines.append("-" * len(head))
    for inst in doc["instances"]:
        for r in inst["runs"]:
            lat = r["latency_ms"]
            lines.append(f"{inst['name']:<{w}} {r['index'] + 1:>3} {r['count']:>7} {r['throughput']:>9.1f} "
                         + " ".join(f"{lat[k]:>8.3f}" for k in ("p50", "p90", "p95", "p99", "p99.9", "max")))
    lines.append("")
    head = (f"{'instance':<{w}} {'cpus':<8} {'model':<14} {'prec':<5} {'thr/s':>9} {'cv':>6} {'p99 ms':>8} "
            f"{'cv':>6} {'p99.9 ms':>8} {'cv':>6} {'max ms':>8} {'spread':>7} {'verdict':<9} more")
    lines.append(head)
    lines.append("-" * len(head))
    for inst in doc["instances"]:
        s = inst["summary"]
        st = s["stability"]
        prec = inst.get("execution_precision") or inst.get("precision") or "?"
        lines.append(f"{inst['name']:<{w}} {_cpus(inst.get('cpus')):<8} {str(inst.get('model')):<14.14} {prec:<5} "
                     f"{_figures(s)} {st['verdict']:<9} {st['more_runs'] if st['verdict'] != 'stable' else '-'}")
    agg = doc["aggregate"]
    lines.append(f"{'all':<{w}} {'':<8} {'':<14} {'':<5} {_figures(agg)} {agg['stability']['verdict']:<9}")
    lines.append("")
    lines.append(f"verdict: {doc['verdict']}")
    for inst in doc["instances"]:
        for reason in inst["summary"]["stability"]["reasons"]:
            lines.append(f"  {inst['name']}: {reason}")
    return "\n".join(lines)


def _figures(s: dict[str, Any]) -> str:
    """Throughput, p99, p99.9 (means of the runs, with their CVs), the largest latency of any run
    and the throughput spread: one row of the console summary (instance or aggregate)."""
    return (f"{s['throughput']['mean']:>9.1f} {s['throughput']['cv']:>6.1%} {s['p99_ms']['mean']:>8.3f} "
            f"{s['p99_ms']['cv']:>6.1%} {s['p999_ms']['mean']:>8.3f} {s['p999_ms']['cv']:>6.1%} "
            f"{s['max_ms']['max']:>8.3f} {s['throughput']['spread']:>7.1%}")


def _noise(noise: dict[str, Any]) -> str:
    if not noise.get("enabled"):
        return "off"
    where = f"confined to CPUs {_cpus(noise['cpus'])}" if noise.get("confined") else "unconfined"
    return f"{noise['hogs']} hog(s) {where}"


# -- compare ------------------------------------------------------------------------------------
def compare(a: dict[str, Any], b: dict[str, Any], alpha: float = stats.ALPHA) -> dict[str, Any]:
    """B against A for every instance present in both, and for the aggregate."""
    rows = []
    names_b = {i["name"]: i for i in b["instances"]}
    for ia in a["instances"]:
        ib = names_b.get(ia["name"])
        if ib is None:
            continue
        rows.append(_compare_one(ia["name"], [r["throughput"] for r in ia["runs"]],
                                 [r["throughput"] for r in ib["runs"]],
                                 [r["latency_ms"]["p99"] for r in ia["runs"]],
                                 [r["latency_ms"]["p99"] for r in ib["runs"]],
                                 [v for r in ia["runs"] for v in r["samples_ms"]],
                                 [v for r in ib["runs"] for v in r["samples_ms"]], alpha))
        rows[-1]["verdict_a"], rows[-1]["verdict_b"] = ia["verdict"], ib["verdict"]
    agg = _compare_one("aggregate", a["aggregate"]["throughput"]["values"], b["aggregate"]["throughput"]["values"],
                       a["aggregate"]["p99_ms"]["values"], b["aggregate"]["p99_ms"]["values"], None, None, alpha)
    agg["verdict_a"], agg["verdict_b"] = a["verdict"], b["verdict"]
    return {"schema": "hosttune.bench-compare/1", "alpha": alpha,
            "a": {"label": a.get("label"), "created": a.get("created"), "kind": a.get("kind")},
            "b": {"label": b.get("label"), "created": b.get("created"), "kind": b.get("kind")},
            "instances": rows, "aggregate": agg,
            "unmatched": sorted({i["name"] for i in a["instances"]} ^ set(names_b))}


def _compare_one(name: str, ta: list[float], tb: list[float], pa: list[float], pb: list[float],
                 la: list[float] | None, lb: list[float] | None, alpha: float) -> dict[str, Any]:
    row = {"name": name, "throughput": stats.compare_values(ta, tb, alpha, True),
           "p99_ms": stats.compare_values(pa, pb, alpha, False)}
    if la and lb:
        mw = stats.mann_whitney_u(la, lb)
        row["latency_distribution"] = {"mann_whitney": mw, "significant": mw["p"] < alpha,
                                       "p50_a": stats.percentile(sorted(la), 50),
                                       "p50_b": stats.percentile(sorted(lb), 50)}
    return row


def compare_console(c: dict[str, Any], a_name: str, b_name: str) -> str:
    lines = [f"A: {a_name} ({c['a'].get('label') or c['a'].get('created')})",
             f"B: {b_name} ({c['b'].get('label') or c['b'].get('created')})",
             f"significance: Mann-Whitney U on per-run values (Welch t beside it), alpha {c['alpha']}", ""]
    head = f"{'instance':<10} {'metric':<10} {'A':>10} {'B':>10} {'delta':>8} {'p (MWU)':>8} {'p (Welch)':>9}  result"
    lines += [head, "-" * len(head)]
    for row in c["instances"] + [c["aggregate"]]:
        for key, label in (("throughput", "thr/s"), ("p99_ms", "p99 ms")):
            m = row[key]
            welch = m.get("welch", {}).get("p")
            delta = f"{m['delta']:+.1%}" if m["delta"] is not None else "-"
            lines.append(f"{row['name']:<10} {label:<10} {m['a']:>10.3f} {m['b']:>10.3f} {delta:>8} "
                         f"{m['mann_whitney']['p']:>8.4f} {welch if welch is None else round(welch, 4)!s:>9}  {m['change']}")
        if "latency_distribution" in row:
            ld = row["latency_distribution"]
            lines.append(f"{row['name']:<10} {'latencies':<10} {ld['p50_a']:>10.3f} {ld['p50_b']:>10.3f} "
                         f"{'':>8} {ld['mann_whitney']['p']:>8.4f} {'':>9}  "
                         f"{'distributions differ' if ld['significant'] else 'same distribution'}")
        lines.append(f"{row['name']:<10} {'verdict':<10} {row['verdict_a']:>10} {row['verdict_b']:>10}")
    if c["unmatched"]:
        lines.append(f"instances in only one result: {', '.join(c['unmatched'])}")
    return "\n".join(lines)


# -- HTML ---------------------------------------------------------------------------------------
def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        if v >= lo - step * 1e-9:
            ticks.append(round(v, 10))
        v += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    decade = 10 ** math.floor(math.log10(lo))
    while decade <= hi:
        for m in (1, 2, 5):
            v = m * decade
            if lo <= v <= hi:
                ticks.append(v)
        decade *= 10
    return ticks


def _svg_frame(width: int, height: int, x0: float, x1: float, y0: float, y1: float, xlabel: str,
               ylabel: str, logx: bool = False, legend: int = 170) -> tuple[list[str], Any, Any]:
    ml, mr, mt, mb = 60, 20 + legend, 15, 45
    pw, ph = width - ml - mr, height - mt - mb
    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    fx0, fx1 = fx(x0), fx(x1)

    def sx(x: float) -> float:
        return ml + (fx(x) - fx0) / ((fx1 - fx0) or 1) * pw

    def sy(y: float) -> float:
        return mt + ph - (y - y0) / ((y1 - y0) or 1) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    for t in (_log_ticks(x0, x1) if logx else _nice_ticks(x0, x1)):
        parts.append(f'<line x1="{sx(t):.1f}" y1="{mt}" x2="{sx(t):.1f}" y2="{mt + ph + 4}" stroke="#eee"/>'
                     f'<text x="{sx(t):.1f}" y="{mt + ph + 16}" text-anchor="middle">{t:g}</text>')
    for t in _nice_ticks(y0, y1):
        parts.append(f'<line x1="{ml - 4}" y1="{sy(t):.1f}" x2="{ml + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
                     f'<text x="{ml - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}'
                 f'{" (log scale)" if logx else ""}</text>'
                 f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {mt + ph / 2})">'
                 f'{html.escape(ylabel)}</text>')
    return parts, sx, sy


def _legend(parts: list[str], width: int, labels: list[str], legend: int = 170) -> None:
    for i, label in enumerate(labels):
        color = COLORS[i % len(COLORS)]
        y = 24 + 15 * i
        parts.append(f'<rect x="{width - legend + 6}" y="{y - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{width - legend + 20}" y="{y + 1}">{html.escape(label)}</text>')


def svg_cdf(series: list[tuple[str, list[float]]], width: int = 800, height: int = 300) -> str:
    """Latency CDFs (y: fraction of requests). The x axis (ms) is logarithmic when the tail is more
    than 20 times the fastest request, so both the body and the tail stay readable."""
    values = [v for _, s in series for v in s]
    if not values:
        return ""
    x_hi = max(max(s) for _, s in series if s)
    x_lo = min(values)
    logx = x_lo > 0 and x_hi / x_lo > 20
    if logx:
        x_lo, x_hi = x_lo / 1.1, x_hi * 1.1
    else:
        pad = (x_hi - x_lo) * 0.05 or max(x_hi * 0.05, 1e-3)
        x_lo, x_hi = max(0.0, x_lo - pad), x_hi + pad
    parts, sx, sy = _svg_frame(width, height, x_lo, x_hi, 0, 1, "latency (ms)", "fraction of requests", logx)
    for i, (label, s) in enumerate(series):
        s = sorted(s)
        n = len(s)
        pts = " ".join(f"{sx(v):.1f},{sy((k + 1) / n):.1f}" for k, v in enumerate(s))
        parts.append(f'<polyline fill="none" stroke="{COLORS[i % len(COLORS)]}" stroke-width="1.5" points="{pts}"/>')
    _legend(parts, width, [label for label, _ in series])
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(series: list[tuple[str, list[float]]], ylabel: str, width: int = 800, height: int = 260) -> str:
    """Per-run values as grouped bars (one group per run, one bar per series)."""
    runs = max((len(v) for _, v in series), default=0)
    if not runs:
        return ""
    top = max(v for _, vals in series for v in vals) * 1.15 or 1
    parts, sx, sy = _svg_frame(width, height, 0.5, runs + 0.5, 0, top, "run", ylabel)
    group = 0.8 / max(1, len(series))
    for i, (label, vals) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        for k, v in enumerate(vals):
            x = sx(k + 1 - 0.4 + i * group)
            w = sx(k + 1 - 0.4 + (i + 1) * group) - x - 1
            parts.append(f'<rect x="{x:.1f}" y="{sy(v):.1f}" width="{max(w, 1):.1f}" height="{sy(0) - sy(v):.1f}" '
                         f'fill="{color}"><title>{html.escape(label)} run {k + 1}: {v:.2f}</title></rect>')
    _legend(parts, width, [label for label, _ in series])
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[list[Any]], head: list[str]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def html_report(docs: list[tuple[str, dict[str, Any]]], title: str = "hosttune bench", prelude: str = "") -> str:
    """One self-contained page for one or more results (e.g. tuned and untuned side by side);
    `prelude` (HTML) goes between the title and the summary."""
    body = [f"<h1>{html.escape(title)}</h1>", prelude]
    summary_rows = []
    for label, doc in docs:
        for inst in doc["instances"]:
            s = inst["summary"]
            summary_rows.append([label, inst["name"], _cpus(inst.get("cpus")), inst.get("model"),
                                 inst.get("execution_precision") or inst.get("precision") or "?",
                                 f"{s['throughput']['mean']:.1f}", f"{s['throughput']['cv']:.1%}",
                                 f"{s['latency_ms']['p50']:.3f}", f"{s['p99_ms']['mean']:.3f}",
                                 f"{s['p99_ms']['cv']:.1%}", f"{s['p999_ms']['mean']:.3f}",
                                 f"{s['p999_ms']['cv']:.1%}", f"{s['max_ms']['max']:.3f}",
                                 s["stability"]["verdict"], "; ".join(s["stability"]["reasons"]) or "-"])
    body.append("<h2>Summary</h2>")
    body.append(_table(summary_rows, ["result", "instance", "cpus", "model", "precision", "throughput/s",
                                      "CV", "p50 ms (pooled)", "p99 ms (mean of runs)", "p99 CV",
                                      "p99.9 ms (mean of runs)", "p99.9 CV", "max ms", "verdict", "why"]))
    # (series name, instance) of every instance of every result, named by result only when there are several
    named = [(f"{label} {inst['name']}" if len(docs) > 1 else inst["name"], inst)
             for label, doc in docs for inst in doc["instances"]]
    body.append("<h2>Latency CDF per instance</h2>")
    body.append(svg_cdf([(name, [v for r in inst["runs"] for v in r["samples_ms"]]) for name, inst in named]))
    for label, doc in docs:
        for inst in doc["instances"]:
            runs = [(f"run {r['index'] + 1}", r["samples_ms"]) for r in inst["runs"]]
            body.append(f"<h3>{html.escape(label)} {html.escape(inst['name'])}: CDF of each run</h3>")
            body.append(svg_cdf(runs, height=240))
    body.append("<h2>Throughput per run</h2>")
    body.append(svg_bars([(name, [r["throughput"] for r in inst["runs"]]) for name, inst in named], "inferences/s"))
    body.append("<h2>p99 latency per run</h2>")
    body.append(svg_bars([(name, [r["latency_ms"]["p99"] for r in inst["runs"]]) for name, inst in named], "p99 ms"))
    body.append("<h2>Tail latency per run: p99.9 and max</h2>")
    body.append(svg_bars([(f"{name} {key}", [r["latency_ms"][key] for r in inst["runs"]])
                          for name, inst in named for key in ("p99.9", "max")], "ms"))
    for label, doc in docs:
        sysinfo = doc["system"]
        cfg = doc["config"]
        body.append(f"<h2>{html.escape(label)}: configuration and system state</h2>")
        rows = [["kind", doc["kind"]], ["created", doc["created"]], ["runs x duration",
                f"{cfg['runs']} x {cfg['duration_s']} s (warmup {cfg['warmup_s']} s)"],
                ["pinned", cfg["pinned"]], ["noise", _noise(cfg["noise"])],
                ["concurrency", cfg.get("concurrency")],
                ["verdict", f"{doc['verdict']} (judges throughput and {cfg.get('judge') or 'p99'})"]]
        for key in ("hostname", "cpu_model", "governor", "turbo", "frequencies", "isolated", "nohz_full",
                    "allowed_cpus", "cpuset", "thp", "openvino_version", "kernel_cmdline", "unsupported"):
            rows.append([key, sysinfo.get(key)])
        for inst in doc["instances"]:
            rows.append([f"{inst['name']} openvino", inst.get("openvino")])
            rows.append([f"{inst['name']} streams / nireq", f"{inst.get('streams')} / {inst.get('nireq')}"])
        body.append(_table(rows, ["what", "value"]))
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px;"
             "vertical-align:top}th{background:#f3f3f3}svg{display:block;margin:0.5em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


# -- runtime comparison (hosttune bench --runtime) ----------------------------------------------
def svg_runtimes(rows: list[tuple[str, float, float, float, float]], width: int = 800, height: int = 300) -> str:
    """The comparison figure: per runtime (and in-flight level) its p50, p99 and p99.9 latency as
    grouped bars, its throughput written above the group."""
    if not rows:
        return ""
    top = max(max(r[2:5]) for r in rows) * 1.2 or 1
    parts, sx, sy = _svg_frame(width, height, 0.5, len(rows) + 0.5, 0, top,
                               "runtime (throughput/s above each group)", "latency (ms)")
    keys = ("p50", "p99", "p99.9")
    for k, (name, thr, *lat) in enumerate(rows):
        for i, v in enumerate(lat):
            x = sx(k + 1 - 0.36 + i * 0.24)
            w = sx(k + 1 - 0.36 + (i + 1) * 0.24) - x - 1
            parts.append(f'<rect x="{x:.1f}" y="{sy(v):.1f}" width="{max(w, 1):.1f}" height="{sy(0) - sy(v):.1f}" '
                         f'fill="{COLORS[i]}"><title>{html.escape(name)} {keys[i]}: {v:.3f} ms</title></rect>')
        parts.append(f'<text x="{sx(k + 1):.1f}" y="{sy(max(lat)) - 6:.1f}" text-anchor="middle">{thr:.0f}/s</text>'
                     f'<text x="{sx(k + 1):.1f}" y="{sy(0) + 28:.1f}" text-anchor="middle">{html.escape(name)}</text>')
    _legend(parts, width, [f"{k} ms" for k in keys])
    parts.append("</svg>")
    return "".join(parts)


def fmt_or_dash(v: Any, fmt: str) -> str:
    """A number formatted, or - when there is none."""
    return "-" if v is None else format(v, fmt)


def check_text(r: dict[str, Any]) -> str:
    """What the output check found, in words."""
    check = r.get("check") or {}
    if r["runtime"] == "openvino-int8" and check:
        return (f"INT8 delta: max abs {fmt_or_dash(check.get('max_abs_diff'), '.3g')}, top-1 agreement "
                f"{fmt_or_dash(check.get('top1_agreement'), '.0%')}")
    if not check:
        return "outputs not checked (no OpenVINO FP32 reference)"
    if check.get("agree"):
        return f"outputs agree (max abs diff {fmt_or_dash(check.get('max_abs_diff'), '.3g')})"
    return f"DISAGREE: {check.get('finding')}"


def html_runtimes(doc: dict[str, Any], title: str = "hosttune bench --runtime") -> str:
    """The runtime comparison: a table per runtime (load, first inference, peak RSS, the output
    check, figures per in-flight level), the pairwise significance, the comparison figure, then the
    usual report of the measured runtimes (an instance per runtime and level)."""
    cfg = doc["config"]
    parts = [f"<p>Model {html.escape(str(cfg.get('onnx')))} ({html.escape(str(cfg.get('onnx_source')))}); "
             f"outputs checked against OpenVINO FP32 with rtol {cfg['rtol']:g}, atol {cfg['atol']:g}; "
             f"{cfg['runs']} interleaved rounds; peak RSS is each runtime's worker process (VmHWM: Python, "
             f"numpy and the runtime).</p>", "<h2>Runtimes</h2>"]
    rows = []
    for r in doc["runtimes"]:
        if r["status"] != "measured":
            rows.append([r["runtime"], r["status"], "-", "-", "-", "-", "-", r["error"]])
            continue
        rows.append([r["runtime"] + (" (untuned)" if (r.get("settings") or {}).get("label") == "untuned" else ""),
                     r["status"], f"{r['load_s']:.2f}", "-" if r.get("compile_s") is None else f"{r['compile_s']:.2f}",
                     f"{r['first_ms']:.2f}", f"{r['peak_rss_mb']:.0f}",
                     ", ".join(f"x{k}: {v['throughput']:.1f}/s p50 {v['p50_ms']:.3f} p99 {v['p99_ms']:.3f} "
                               f"p99.9 {v['p999_ms']:.3f} ({v['verdict']})" for k, v in r["levels"].items()),
                     check_text(r)])
    parts.append(_table(rows, ["runtime", "status", "load s", "compile s", "first inference ms", "peak RSS MB",
                               "figures per in-flight level", "outputs / reason"]))
    parts.append("<h2>Comparison: latency and throughput per runtime</h2>")
    parts.append(svg_runtimes([(f["instance"], f["throughput"], f["p50_ms"], f["p99_ms"], f["p999_ms"])
                               for r in doc["runtimes"] for f in r["levels"].values()]))
    if doc.get("pairs"):
        prow = []
        for p in doc["pairs"]:
            t, lat = p["throughput"], p["p99_ms"]
            prow.append([f"{p['b']} vs {p['a']}", f"{t['delta']:+.1%}" if t["delta"] is not None else "-",
                         f"{t['p']:.3g} ({t['test']})", t["change"],
                         f"{lat['delta']:+.1%}" if lat["delta"] is not None else "-", f"{lat['p']:.3g} ({lat['test']})",
                         lat["change"]])
        parts.append(f"<h2>Pairwise significance (alpha {doc.get('alpha')})</h2>")
        parts.append(_table(prow, ["pair (B vs A)", "throughput delta", "p", "throughput", "p99 delta", "p", "p99"]))
    if not doc["instances"]:
        return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
                f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n")
    return html_report([(doc.get("label") or "runtimes", doc)], title=title, prelude="".join(parts))
