"""Pull the per-instance throughput, p99 / p99.9 / max latency and verdict out of `hosttune bench --json`.

The bench JSON (schema `hosttune.bench/1`, docs/serve-and-bench.md) is owned by `hosttune bench`:
`instances[]` with `name`, `throughput` (mean of the runs, inferences/s), `p99_ms` and `p999_ms`
(means of the runs), `max_ms` (the largest latency of any run) and `verdict` (the stability verdict:
stable | unsure | unstable), `aggregate` and an overall `verdict`. This collector looks for those under the key names below -- adjust these tables if that
schema changes; nothing else in fleet reads the bench document. The verdict is about how repeatable
the numbers are, not pass/fail: a host's bench status comes from the exit code of `hosttune bench`
(1 with --fail-unstable and a verdict other than stable).
"""

from __future__ import annotations

import math
from typing import Any

from hosttune import numbers
from hosttune.errors import HosttuneError

# where the per-instance records are (first key that holds a list of mappings)
INSTANCE_LISTS = ("instances", "results", "runs")
# each entry: a key, or a path of keys into nested mappings; first one present wins
NAME_KEYS: tuple[Any, ...] = ("name", "instance", "node")
THROUGHPUT_KEYS: tuple[Any, ...] = ("throughput", "throughput_ips", "throughput_rps", "ips", "fps", "rps",
                                    ("throughput", "value"), ("results", "throughput"))
P99_KEYS: tuple[Any, ...] = ("p99_ms", "latency_p99_ms", ("latency_ms", "p99"), ("latency", "p99_ms"),
                             ("latency", "p99"), ("percentiles_ms", "p99"), "p99")
# the tail figures are reported only when the bench document has them (hosttune bench before p99.9 did not)
TAIL_KEYS: dict[str, tuple[Any, ...]] = {"p999_ms": ("p999_ms", ("latency_ms", "p99.9")),
                                         "max_ms": ("max_ms", ("latency_ms", "max"))}
VERDICT_KEYS: tuple[Any, ...] = ("verdict", ("verdict", "status"), "status", "result")
UNIT_KEYS: tuple[Any, ...] = ("throughput_unit", "unit", ("throughput", "unit"))
AGGREGATE_THROUGHPUT_KEYS: tuple[Any, ...] = (("aggregate", "throughput", "mean"), ("aggregate", "throughput"))
AGGREGATE_P99_KEYS: tuple[Any, ...] = (("aggregate", "p99_ms", "mean"), ("aggregate", "p99_ms"))


def _get(doc: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        path = key if isinstance(key, tuple) else (key,)
        node = doc
        for part in path:
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None and not isinstance(node, dict):
            return node
    return None


def _num(value: Any) -> float | None:
    """A finite number from a host's bench result: a JSON number, or ASCII decimal text (float()
    would read '١٢' as 12 and 'nan'/'inf' as numbers; docs/security.md)."""
    if isinstance(value, str):
        try:
            return numbers.parse_udecimal(value, "", 0.0, 1e18)
        except HosttuneError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """{"verdict", "unit", "instances": [{"name", "throughput", "p99_ms", ["p999_ms", "max_ms",] "verdict"}]}"""
    records: list[dict[str, Any]] = []
    for key in INSTANCE_LISTS:
        value = doc.get(key)
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            records = [v for v in value if isinstance(v, dict)]
            break
    if not records and _get(doc, THROUGHPUT_KEYS) is not None:
        records = [doc]  # one instance, reported flat
    instances = []
    for i, rec in enumerate(records):
        verdict = _get(rec, VERDICT_KEYS)
        entry = {
            "name": str(_get(rec, NAME_KEYS) if _get(rec, NAME_KEYS) is not None else f"#{i}"),
            "throughput": _num(_get(rec, THROUGHPUT_KEYS)),
            "p99_ms": _num(_get(rec, P99_KEYS)),
        }
        entry.update({k: _num(_get(rec, keys)) for k, keys in TAIL_KEYS.items() if _get(rec, keys) is not None})
        entry["verdict"] = str(verdict) if verdict is not None else None
        instances.append(entry)
    verdict = _get(doc, VERDICT_KEYS)
    return {"verdict": str(verdict) if verdict is not None else None,
            "unit": _get(doc, UNIT_KEYS) or "inferences/s",
            "throughput": _num(_get(doc, AGGREGATE_THROUGHPUT_KEYS)),
            "p99_ms": _num(_get(doc, AGGREGATE_P99_KEYS)),
            "instances": instances}


def verdict_text(summary: dict[str, Any]) -> str:
    """`verdict unstable (node0 unstable, node1 stable)`, for a reason."""
    per = ", ".join(f"{i['name']} {i['verdict']}" for i in summary["instances"] if i["verdict"])
    overall = summary.get("verdict") or "?"
    return f"verdict {overall}" + (f" ({per})" if per else "")


def describe(summary: dict[str, Any]) -> str:
    """One line for the console table: `node0 812.0/s p99 4.10ms p99.9 5.20ms max 7.00ms stable; node1 ...`."""
    parts = []
    for i in summary["instances"]:
        tp = f"{i['throughput']:.1f}/s" if i["throughput"] is not None else "?/s"
        p99 = f"p99 {i['p99_ms']:.2f}ms" if i["p99_ms"] is not None else "p99 ?"
        tails = [f"{label} {i[key]:.2f}ms" for key, label in (("p999_ms", "p99.9"), ("max_ms", "max"))
                 if i.get(key) is not None]
        parts.append(" ".join(x for x in (i["name"], tp, p99, *tails, i["verdict"] or "") if x))
    return "; ".join(parts) or "no instances in the bench JSON"
