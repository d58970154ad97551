"""Prometheus metrics exactly as OVMS exposes them, so dashboards and alerts built for OVMS read
hosttune serve too (and the two instance kinds stay interchangeable per node).

OVMS (src/model_metric_reporter.cpp, docs/metrics.md) exposes its counters under bare names
(`ovms_requests_success`, no `_total`), leaves the `version` label off ModelReady, labels
`ovms_current_requests` per model, and uses the histogram buckets floor(10 * 1.8^i) us, i < 33.
prometheus_client cannot render a counter without `_total`, hence this small renderer (the text
itself is written by hosttune.exposition, as for the agent).

Every update happens on the server's event-loop thread (OpenVINO's completion callbacks only wake
the loop), so the children are plain attributes without locks: an observation is a bisect and
three additions.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable

from hosttune.errors import HosttuneError
from hosttune.exposition import CONTENT_TYPE, header, sample

BUCKETS_US = tuple(math.floor(10 * 1.8 ** i) for i in range(33))  # OVMS: 10, 18, 32, 58, 104, ...
KSERVE_METHODS = ("ModelInfer", "ModelMetadata", "ModelReady")
UNVERSIONED_METHODS = ("ModelReady",)  # OVMS reports these per model name only

Labels = tuple[tuple[str, str], ...]

# OVMS's metric families (src/metrics/metric_config.hpp): on by default, and the two queue gauges
# that are on only when listed. The graph families are OVMS's too (MediaPipe and DAG graphs, which
# hosttune serve does not serve): accepted in a list, with no series, as on an OVMS without graphs.
DEFAULT_FAMILIES = ("ovms_current_requests", "ovms_requests_success", "ovms_requests_fail", "ovms_request_time_us",
                    "ovms_streams", "ovms_inference_time_us", "ovms_wait_for_infer_req_time_us")
OPTIONAL_FAMILIES = ("ovms_infer_req_queue_size", "ovms_infer_req_active")
GRAPH_FAMILIES = ("ovms_current_graphs", "ovms_requests_accepted", "ovms_requests_rejected", "ovms_graph_error",
                  "ovms_graph_processing_time_us", "ovms_responses")
# hosttune's own families: not OVMS's, so no metrics_list names them; exposed whenever metrics are on
# (the reload pair is hosttune/serve/reload.py's)
OWN_FAMILIES = ("hosttune_requests_rejected_total", "hosttune_config_reloads_total", "hosttune_config_reload_failing")


def enabled_families(metrics_list: list[str] | None, where: str) -> frozenset[str]:
    """The families /metrics exposes for an OVMS metrics_list (`--metrics_list a,b` split at its
    commas, or a config.json's monitoring.metrics.metrics_list), None or empty: OVMS's default set.
    A name OVMS does not know is refused naming it, as OVMS refuses it ("Invalid name in
    metrics_list"); `where` names the option or the file's field. For Metrics(enabled=...)."""
    if not metrics_list:
        return frozenset(DEFAULT_FAMILIES + OWN_FAMILIES)
    known = DEFAULT_FAMILIES + OPTIONAL_FAMILIES + GRAPH_FAMILIES
    for name in metrics_list:
        if name not in known:
            raise HosttuneError(f"{name!r} is not an OVMS metric family (known: {', '.join(known)})", where=where)
    return frozenset((*metrics_list, *OWN_FAMILIES))


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def samples(self, name: str, labels: Labels) -> list[str]:
        return [sample(name, labels, self.value)]


class Gauge(Counter):
    __slots__ = ("function",)

    def __init__(self) -> None:
        super().__init__()
        self.function: Callable[[], float] | None = None

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value at scrape time (e.g. infer requests in use)."""
        self.function = function

    def samples(self, name: str, labels: Labels) -> list[str]:
        value = self.function() if self.function is not None else self.value
        return [sample(name, labels, value)]


class Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_US) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS_US, value)] += 1  # le is inclusive: value <= bound
        self.sum += value
        self.count += 1

    def samples(self, name: str, labels: Labels) -> list[str]:
        # OVMS's order: _count, _sum, then the cumulative buckets
        out = [sample(f"{name}_count", labels, self.count), sample(f"{name}_sum", labels, self.sum)]
        total = 0
        for bound, n in zip((*map(str, BUCKETS_US), "+Inf"), self.counts):
            total += n
            out.append(sample(f"{name}_bucket", (*labels, ("le", bound)), total))
        return out


class Family:
    """One metric name with its HELP and TYPE and a child per label set."""

    def __init__(self, name: str, help: str, kind: str, child: type) -> None:
        self.name, self.help, self.kind, self.child = name, help, kind, child
        self.children: dict[Labels, Counter | Gauge | Histogram] = {}

    def labels(self, **labels: str) -> Counter | Gauge | Histogram:
        key = tuple(sorted(labels.items()))  # OVMS lists labels alphabetically
        if key not in self.children:
            self.children[key] = self.child()
        return self.children[key]

    def render(self, out: list[str]) -> None:
        header(out, self.name, self.help, self.kind)
        for key, child in self.children.items():
            out.extend(child.samples(self.name, key))


class RejectedCounter:
    """hosttune's own counter of requests refused before reaching a model, by reason."""

    def __init__(self, family: Family) -> None:
        self.family = family

    def labels(self, reason: str) -> Counter:
        return self.family.labels(reason=reason)  # type: ignore[return-value]


class Metrics:
    """Every family is counted; `render` writes the `enabled` ones (enabled_families; None: all)."""

    def __init__(self, enabled: frozenset[str] | None = None) -> None:
        self.enabled = enabled
        def family(name: str, help: str, child: type) -> Family:
            kind = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[child]
            f = Family(name, help, kind, child)
            self.families.append(f)
            return f

        self.families: list[Family] = []
        # HELP texts as OVMS writes them
        self.success = family("ovms_requests_success", "Number of successful requests to a model or a DAG.", Counter)
        self.fail = family("ovms_requests_fail", "Number of failed requests to a model or a DAG.", Counter)
        self.request_time = family("ovms_request_time_us", "Processing time of requests to a model or a DAG.",
                                   Histogram)
        self.inference_time = family("ovms_inference_time_us", "Inference execution time in the OpenVINO backend.",
                                     Histogram)
        self.wait_time = family("ovms_wait_for_infer_req_time_us", "Request waiting time in the scheduling queue.",
                                Histogram)
        self.streams = family("ovms_streams", "Number of OpenVINO execution streams.", Gauge)
        self.nireq = family("ovms_infer_req_queue_size", "Inference request queue size (nireq).", Gauge)
        self.active = family("ovms_infer_req_active",
                             "Number of currently consumed inference request from the processing queue.", Gauge)
        self.current = family("ovms_current_requests", "Number of inference requests currently in process.", Gauge)
        # not an OVMS metric: Prometheus's own naming (counters end in _total)
        self.bad = RejectedCounter(family(
            "hosttune_requests_rejected_total", "Requests rejected before reaching a model (unknown route or "
            "model, malformed or oversized body).", Counter))

    def model(self, name: str, version: int, streams: int, nireq: int, active_fn: Callable[[], float]) -> dict:
        """The children of one model, created at start so that every series exists from the first
        scrape (as in OVMS) and a request only touches attributes. Its REST request series are in
        it; `requests` makes another interface's (gRPC)."""
        v = str(version)
        self.streams.labels(name=name, version=v).set(streams)
        self.nireq.labels(name=name, version=v).set(nireq)
        self.active.labels(name=name, version=v).set_function(active_fn)
        return {
            **self.requests(name, version, "REST"),
            "inference_time": self.inference_time.labels(name=name, version=v),
            "wait_time": self.wait_time.labels(name=name, version=v),
            "current": self.current.labels(name=name, version=v),
        }

    def requests(self, name: str, version: int, interface: str) -> dict:
        """The request counters (per KServe method) and the request-time histogram of one model
        over one interface: "REST" or "gRPC", OVMS's `interface` label values."""
        v = str(version)

        def per_method(fam: Family) -> dict[str, Counter]:
            return {m: fam.labels(api="KServe", interface=interface, method=m, name=name,
                                  **({} if m in UNVERSIONED_METHODS else {"version": v}))
                    for m in KSERVE_METHODS}

        return {
            "success": per_method(self.success),
            "fail": per_method(self.fail),
            "request_time": self.request_time.labels(interface=interface, name=name, version=v),
        }

    def render(self) -> tuple[bytes, str]:
        out: list[str] = []
        for f in self.families:
            if self.enabled is None or f.name in self.enabled:
                f.render(out)
        return ("\n".join(out) + "\n").encode(), CONTENT_TYPE
