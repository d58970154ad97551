"""The combined fleet report: JSON (schema `hosttune.fleet/1`), console table, self-contained HTML."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from typing import Any

from hosttune.fleet import bench as bench_collect
from hosttune.fleet.runner import HostResult

SCHEMA = "hosttune.fleet/1"
STATUSES = ("ok", "drift", "pending-reboot", "unreachable", "failed", "invalid", "cancelled")
EXIT_INTERRUPTED = 130


def exit_code(results: list[HostResult], interrupted: bool) -> int:
    """2 bad input (a host's policy is invalid), 130 interrupted, 1 any drift/failure/unreachable,
    3 nothing worse than a pending reboot, 0 all ok."""
    statuses = {r.status for r in results}
    if "invalid" in statuses:
        return 2
    if interrupted:
        return EXIT_INTERRUPTED
    if statuses & {"drift", "failed", "unreachable", "cancelled"}:
        return 1
    if "pending-reboot" in statuses:
        return 3
    return 0


def build(command: str, results: list[HostResult], interrupted: bool, *, inventory: list[str],
          limit: str | None, started: float, elapsed_s: float, forks: int, connect_timeout: int,
          timeout: float | None) -> dict[str, Any]:
    counts = {s: 0 for s in STATUSES}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {
        "schema": SCHEMA,
        "command": command,
        "inventory": list(inventory),
        "limit": limit,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed_s, 3),
        "forks": forks,
        "connect_timeout_s": connect_timeout,
        "timeout_s": timeout,
        "interrupted": interrupted,
        "exit_code": exit_code(results, interrupted),
        "counts": counts,
        "hosts": [host_entry(r) for r in results],
    }


def host_entry(r: HostResult) -> dict[str, Any]:
    h = r.host
    entry: dict[str, Any] = {
        "host": h.name,
        "address": h.address,
        "port": h.port,
        "user": h.user,
        "groups": [g for g in h.groups if g != "all"],
        "status": r.status,
        "reason": r.reason,
        "elapsed_s": r.elapsed_s,
        "exit_code": r.exit_code,
        "policy_source": h.policy_source,
    }
    entry.update(r.detail)
    entry["result"] = r.result
    return entry


# -- console ---------------------------------------------------------------------------------------
def detail_text(command: str, e: dict[str, Any]) -> str:
    if command == "bench" and e.get("bench"):
        text = bench_collect.describe(e["bench"])
        return f"{text}  [{e['reason']}]" if e.get("reason") else text
    if e.get("reason"):
        return e["reason"]
    if command == "capture" and e.get("capture"):
        return (f"{e.get('hw_class', '?')}  {e['capture']} ({e.get('capture_bytes', 0)} bytes, "
                f"hostname {e.get('hostname')})")
    if command == "plan" and e.get("result"):
        p = e["result"]
        inst = ", ".join(f"{i['name']}:{i['cpus_list']}" for i in p.get("instances", [])) or "no instances"
        iso = _cpus(p.get("isolated", []))
        tuned = p.get("tuned") or {}
        mark = " (tuned)" if tuned.get("changed") else ""
        return f"{(p.get('hw_class') or {}).get('id', '?')}{mark}  {p.get('profile')}: isolated {iso or '-'}; {inst}"
    if command == "verify" and e.get("result"):
        counts = e["result"].get("counts") or {}
        return ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "ok"
    return ""


def _cpus(cpus: list[int]) -> str:
    from hosttune import cpulist

    return cpulist.format(cpus)


def table(report: dict[str, Any]) -> str:
    command = report["command"]
    rows = [("HOST", "STATUS", "TIME", "DETAIL")]
    for e in report["hosts"]:
        rows.append((e["host"], e["status"], f"{e['elapsed_s']:.1f}s", detail_text(command, e)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows]
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
    tail = " (interrupted)" if report["interrupted"] else ""
    lines.append(f"\n{len(report['hosts'])} host(s): {counts} in {report['elapsed_s']:.1f}s{tail}")
    return "\n".join(lines)


# -- files -----------------------------------------------------------------------------------------
def write(report: dict[str, Any], out_dir: str) -> list[str]:
    """DIR/report.json and DIR/report.html (+ DIR/plans/<host>.json for plan); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = [_atomic(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2) + "\n")]
    written.append(_atomic(os.path.join(out_dir, "report.html"), render_html(report)))
    if report["command"] == "plan":
        from hosttune.fleet.ops import file_stem

        plans = os.path.join(out_dir, "plans")
        os.makedirs(plans, exist_ok=True)
        for e in report["hosts"]:
            if e.get("result"):
                path = os.path.join(plans, file_stem(e["host"]) + ".json")
                written.append(_atomic(path, json.dumps(e["result"], indent=2) + "\n"))
    return written


def _atomic(path: str, text: str) -> str:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


STATUS_COLOURS = {"ok": "#2e7d32", "drift": "#e65100", "pending-reboot": "#f9a825", "unreachable": "#b71c1c",
                  "failed": "#b71c1c", "invalid": "#6a1b9a", "cancelled": "#616161"}


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: summary table, and for bench the throughput, p99 and (when the hosts'
    results have it) p99.9 per host side by side as inline SVG bar charts (no scripts, no external assets)."""
    e = html.escape
    command = report["command"]
    rows = []
    for h in report["hosts"]:
        colour = STATUS_COLOURS.get(h["status"], "#000")
        rows.append(f"<tr><td>{e(h['host'])}</td><td>{e(h['address'] or '')}</td>"
                    f"<td style='color:{colour};font-weight:bold'>{e(h['status'])}</td>"
                    f"<td class=n>{h['elapsed_s']:.1f}s</td><td>{e(detail_text(command, h))}</td></tr>")
    charts = ""
    if command == "bench":
        unit = "inferences/s"
        # (label, instance) per bar; a host without a bench result gets one 'n/a' bar per chart
        bars: list[tuple[str, dict[str, Any]]] = []
        for h in report["hosts"]:
            summary = h.get("bench") or {}
            unit = summary.get("unit") or unit
            bars += [(f"{h['host']} {inst['name']}", inst) for inst in summary.get("instances", [])]
            if not summary.get("instances"):
                bars.append((f"{h['host']} ({h['status']})", {}))
        figures = [("throughput", "#1565c0", "", f"throughput ({unit}, higher is better)"),
                   ("p99_ms", "#c62828", " ms", "p99 latency (ms, lower is better)")]
        if any(inst.get("p999_ms") is not None for _, inst in bars):
            figures.append(("p999_ms", "#6a1b9a", " ms", "p99.9 latency (ms, lower is better)"))
        charts = "<div class=charts>" + "".join(
            f"<figure>{svg_bars([(label, inst.get(key)) for label, inst in bars], colour, suffix=suffix)}"
            f"<figcaption>{e(caption)}</figcaption></figure>" for key, colour, suffix, caption in figures) + "</div>"
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hosttune fleet {e(command)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}}
td.n{{text-align:right}} .charts{{display:flex;flex-wrap:wrap;gap:2em}} figure{{margin:0}}
figcaption{{font-size:.9em;color:#555;text-align:center}}
</style></head><body>
<h1>hosttune fleet {e(command)}</h1>
<p>{e(', '.join(report['inventory']))}{e(' --limit ' + report['limit']) if report['limit'] else ''} &middot;
started {e(report['started_at'])} &middot; {report['elapsed_s']:.1f}s &middot; forks {report['forks']} &middot;
{e(counts)}{' &middot; <b>interrupted</b>' if report['interrupted'] else ''} &middot; exit {report['exit_code']}</p>
{charts}
<table><tr><th>host</th><th>address</th><th>status</th><th>time</th><th>detail</th></tr>
{''.join(rows)}
</table></body></html>
"""


def svg_bars(bars: list[tuple[str, float | None]], colour: str, suffix: str = "") -> str:
    """Horizontal bar chart; a bar without a value is drawn as 'n/a'."""
    e = html.escape
    label_w, bar_w, row_h = 220, 320, 22
    top = max([v for _, v in bars if v is not None] or [0]) or 1.0
    height = row_h * max(1, len(bars)) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" height="{height}" '
             f'font-size="12" font-family="sans-serif">']
    for i, (label, value) in enumerate(bars):
        y = 5 + i * row_h
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{e(label)}</text>')
        if value is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + 14}" fill="#999">n/a</text>')
            continue
        w = max(1.0, bar_w * value / top)
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 6}" fill="{colour}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{value:,.2f}{e(suffix)}</text>')
    parts.append("</svg>")
    return "".join(parts)
