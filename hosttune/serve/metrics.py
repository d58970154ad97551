"""Prometheus metrics with OVMS's names, so dashboards built for OVMS read hosttune serve too."""

from __future__ import annotations

from typing import Any

# OVMS's latency buckets (microseconds): 10 * 1.8^i
BUCKETS_US = tuple(round(10 * 1.8 ** i) for i in range(33))


class Metrics:
    def __init__(self) -> None:
        import prometheus_client
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        prometheus_client.disable_created_metrics()  # no *_created series (OVMS has none)

        self.registry = CollectorRegistry()
        labels = ["api", "interface", "method", "name", "version"]
        self.success = Counter("ovms_requests_success", "Number of successful requests to a model.",
                               labels, registry=self.registry)
        self.fail = Counter("ovms_requests_fail", "Number of failed requests to a model.",
                            labels, registry=self.registry)
        mlabels = ["interface", "name", "version"]
        self.request_time = Histogram("ovms_request_time_us", "Processing time of requests to a model, "
                                      "from the end of reading the body to the response (us).",
                                      mlabels, buckets=BUCKETS_US, registry=self.registry)
        self.inference_time = Histogram("ovms_inference_time_us", "Inference execution time in OpenVINO (us).",
                                        ["name", "version"], buckets=BUCKETS_US, registry=self.registry)
        self.wait_time = Histogram("ovms_wait_for_infer_req_time_us",
                                   "Time a request waited for a free infer request (us).",
                                   ["name", "version"], buckets=BUCKETS_US, registry=self.registry)
        self.streams = Gauge("ovms_streams", "Number of OpenVINO execution streams.", ["name", "version"],
                             registry=self.registry)
        self.nireq = Gauge("ovms_infer_req_queue_size", "Infer request pool size.", ["name", "version"],
                           registry=self.registry)
        self.active = Gauge("ovms_infer_req_active", "Infer requests in use.", ["name", "version"],
                            registry=self.registry)
        self.current = Gauge("ovms_current_requests", "Requests being processed.", registry=self.registry)
        self.bad = Counter("hosttune_requests_rejected", "Requests rejected before reaching a model "
                           "(unknown route or model, malformed or oversized body).", ["reason"],
                           registry=self.registry)

    def model(self, name: str, version: int, streams: int, nireq: int, active_fn: Any) -> dict[str, Any]:
        """Pre-bound label children for one model (labels() is the slow part of an observation)."""
        v = str(version)
        self.streams.labels(name, v).set(streams)
        self.nireq.labels(name, v).set(nireq)
        self.active.labels(name, v).set_function(active_fn)
        return {
            "success": {m: self.success.labels("KServe", "REST", m, name, v)
                        for m in ("ModelInfer", "ModelMetadata", "ModelReady")},
            "fail": {m: self.fail.labels("KServe", "REST", m, name, v)
                     for m in ("ModelInfer", "ModelMetadata", "ModelReady")},
            "request_time": self.request_time.labels("REST", name, v),
            "inference_time": self.inference_time.labels(name, v),
            "wait_time": self.wait_time.labels(name, v),
        }

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
