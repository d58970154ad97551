"""Pull the per-instance throughput, p99 latency and verdict out of `hosttune bench --json`.

The bench JSON (schema `hosttune.bench/1`, docs/serve-and-bench.md) is owned by `hosttune bench`.
This collector only needs, per instance, a name, a throughput, a p99 latency and a verdict, and
looks for them under the key names below: adjust these tables if that schema changes; nothing
else in fleet reads the bench document.
"""

from __future__ import annotations

from typing import Any

# where the per-instance records are (first key that holds a list of mappings)
INSTANCE_LISTS = ("instances", "results", "runs")
# each entry: a key, or a path of keys into nested mappings; first one present wins
NAME_KEYS: tuple[Any, ...] = ("name", "instance", "node")
THROUGHPUT_KEYS: tuple[Any, ...] = ("throughput", "throughput_ips", "throughput_rps", "ips", "fps", "rps",
                                    ("throughput", "value"), ("results", "throughput"))
P99_KEYS: tuple[Any, ...] = ("p99_ms", "latency_p99_ms", ("latency_ms", "p99"), ("latency", "p99_ms"),
                             ("latency", "p99"), ("percentiles_ms", "p99"), "p99")
VERDICT_KEYS: tuple[Any, ...] = ("verdict", ("verdict", "status"), "status", "result")
UNIT_KEYS: tuple[Any, ...] = ("throughput_unit", "unit", ("throughput", "unit"))
PASSING = {"pass", "passed", "ok", "good", "success", None}


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
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """{"verdict", "unit", "instances": [{"name", "throughput", "p99_ms", "verdict"}]}"""
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
        instances.append({
            "name": str(_get(rec, NAME_KEYS) if _get(rec, NAME_KEYS) is not None else f"#{i}"),
            "throughput": _num(_get(rec, THROUGHPUT_KEYS)),
            "p99_ms": _num(_get(rec, P99_KEYS)),
            "verdict": str(verdict) if verdict is not None else None,
        })
    verdict = _get(doc, VERDICT_KEYS)
    return {"verdict": str(verdict) if verdict is not None else None,
            "unit": _get(doc, UNIT_KEYS) or "inferences/s", "instances": instances}


def failing(summary: dict[str, Any]) -> str | None:
    """A reason if the bench's own verdict (overall or an instance's) is not a pass."""
    bad = [f"{i['name']} {i['verdict']}" for i in summary["instances"]
           if i["verdict"] and i["verdict"].lower() not in PASSING]
    overall = summary.get("verdict")
    if overall and overall.lower() not in PASSING:
        return f"verdict {summary['verdict']}" + (f" ({', '.join(bad)})" if bad else "")
    if bad:
        return "verdict " + ", ".join(bad)
    return None


def describe(summary: dict[str, Any]) -> str:
    """One line for the console table: `node0 812/s p99 4.1ms pass; node1 ...`."""
    parts = []
    for i in summary["instances"]:
        tp = f"{i['throughput']:.1f}/s" if i["throughput"] is not None else "?/s"
        p99 = f"p99 {i['p99_ms']:.2f}ms" if i["p99_ms"] is not None else "p99 ?"
        parts.append(" ".join(x for x in (i["name"], tp, p99, i["verdict"] or "") if x))
    return "; ".join(parts) or "no instances in the bench JSON"
