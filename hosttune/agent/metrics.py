"""A small Prometheus registry: gauges and counters with labels, rendered in the text exposition
format 0.0.4.

Why not prometheus_client: importing it loads prometheus_client.exposition, which imports ssl
unconditionally (libssl + libcrypto, about 5 MB RSS) along with urllib.request and wsgiref; with it
the agent measured 27-28 MB against a 25 MB budget. The agent needs two metric types and one
output format; the tests parse this output with prometheus_client's own parser.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}"
    return repr(float(value))


class Metric:
    def __init__(self, registry: Registry, name: str, help: str, kind: str, labels: Iterable[str] = ()) -> None:
        self.registry = registry
        self.name = name
        self.help = help
        self.kind = kind
        self.labels = tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labels)}")
        return tuple(str(labels[n]) for n in self.labels)

    def set(self, value: float, **labels: str) -> None:
        with self.registry.lock:
            self.values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up")
        key = self._key(labels)
        with self.registry.lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float | None:
        with self.registry.lock:
            return self.values.get(self._key(labels))

    def remove(self, **labels: str) -> None:
        with self.registry.lock:
            self.values.pop(self._key(labels), None)

    def clear(self) -> None:
        with self.registry.lock:
            self.values.clear()

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for key, value in sorted(self.values.items()):
            if self.labels:
                pairs = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(self.labels, key))
                out.append(f"{self.name}{{{pairs}}} {_number(value)}")
            else:
                out.append(f"{self.name} {_number(value)}")


class Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: list[Metric] = []

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Metric:
        return self._add(Metric(self, name, help, "gauge", labels))

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Metric:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        return self._add(Metric(self, name, help, "counter", labels))

    def _add(self, metric: Metric) -> Metric:
        if any(m.name == metric.name for m in self.metrics):
            raise ValueError(f"duplicate metric {metric.name}")
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        out: list[str] = []
        with self.lock:
            for metric in self.metrics:
                metric.render(out)
        return "\n".join(out) + "\n"
