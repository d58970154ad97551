"""In-process benchmark worker: one process per instance, like benchmark_app.

Started by `hosttune bench` as `python -m hosttune.bench.worker`, with a JSON config as its only
argument. It pins itself to the instance's CPUs (os.sched_setaffinity) before OpenVINO starts its
threads, compiles the model with the instance's properties, checks the runtime precision, warms
up, prints one `ready` line, then runs one timed run per `go` line on stdin, printing each run's
latencies as one JSON line. LATENCY: synchronous infer() in a loop (one stream). THROUGHPUT:
AsyncInferQueue with nireq jobs kept full (the plan's streams).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from hosttune.extras import missing_extra


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _inputs(compiled: Any, seed: int) -> dict[int, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    data = {}
    for i, port in enumerate(compiled.inputs):
        ps = port.get_partial_shape()
        shape = [int(d.get_length()) if d.is_static else 1 for d in ps]
        dtype = np.dtype(port.get_element_type().to_dtype())
        if dtype.kind == "f":
            data[i] = rng.random(shape).astype(dtype)
        else:
            data[i] = rng.integers(0, 2, size=shape).astype(dtype)
    return data


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    cpus = cfg.get("cpus")
    if cpus:
        # not limited to the inherited affinity: isolated CPUs are outside every default affinity
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:
            _emit({"event": "error", "error": f"cannot run on CPUs {cpus}: {exc.strerror} (cgroup cpuset?)"})
            return 2
    try:
        import openvino as ov

        from hosttune.model.precision import runtime_precision
    except ModuleNotFoundError as exc:  # a base install: the parent shows this one line
        error = missing_extra(exc, "bench")
        if error is None:
            raise
        _emit({"event": "error", "error": error.message})
        return 2

    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(cfg["model_path"]), "CPU", cfg.get("config") or {})
    except Exception as exc:
        _emit({"event": "error", "error": f"cannot compile {cfg['model_path']}: {str(exc).strip()[:400]}"})
        return 2
    api = cfg.get("api") or "sync"
    nireq = int(cfg.get("nireq") or compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    if api == "sync":
        nireq = 1
    data = _inputs(compiled, int(cfg.get("seed", 1)))
    precision = runtime_precision(compiled)
    precision.pop("compute", None)

    if api == "sync":
        req = compiled.create_infer_request()
        for i, arr in data.items():
            req.set_input_tensor(i, ov.Tensor(arr))

        def timed(duration: float) -> tuple[list[float], float]:
            lat = []
            clock = time.perf_counter
            start = clock()
            deadline = start + duration
            now = start
            while now < deadline:
                t0 = now
                req.infer()
                now = clock()
                lat.append((now - t0) * 1000.0)
            return lat, now - start
    else:
        queue = ov.AsyncInferQueue(compiled, nireq)
        lat_box: list[list[float]] = [[]]

        def done(_req: Any, started: float) -> None:
            lat_box[0].append((time.perf_counter() - started) * 1000.0)

        queue.set_callback(done)

        def timed(duration: float) -> tuple[list[float], float]:
            lat_box[0] = []
            clock = time.perf_counter
            start = clock()
            deadline = start + duration
            while clock() < deadline:
                queue.start_async(data, clock())
            queue.wait_all()
            return lat_box[0], clock() - start

    warm_lat, _ = timed(float(cfg.get("warmup_s", 1.0)))
    _emit({"event": "ready", "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)), "api": api,
           "nireq": nireq, "streams": int(compiled.get_property("NUM_STREAMS")),
           "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
           "precision": precision, "openvino_version": ov.get_version(), "warmup_count": len(warm_lat)})
    duration = float(cfg.get("duration_s", 10.0))
    for line in sys.stdin:
        if line.strip() != "go":
            break
        lat, elapsed = timed(duration)
        _emit({"event": "run", "latencies_ms": [round(v, 4) for v in lat], "elapsed_s": elapsed})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
