"""The worker process of one runtime in `hosttune bench --runtime`: `python -m
hosttune.bench.runtimes.worker CONFIG_JSON`.

One process per runtime, so a runtime that crashes (TVM) costs its own row only, each runtime's
peak RSS is its own process's (VmHWM: Python, numpy and the runtime together), and each one's
threads can be read from /proc/PID/task. It pins itself to the instance's CPUs and binds its memory
before the runtime is imported, loads the model, runs the correctness inputs once (the first
inference timed), writes their outputs, warms up, prints `ready`, then one timed run per
`go N` line on stdin (N concurrent callers), one JSON line each.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from typing import Any


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _tids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _allowed(tid: int) -> str | None:
    try:
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # the thread ended
        return None
    return None


def _comm(tid: int) -> str | None:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    # VmHWM: this process's own high-water mark. Not ru_maxrss: Linux carries that across fork and
    # exec, so a worker would report its parent's peak (seen: the same 155 MB for every runtime)
    return _status_mb("VmHWM")


def timed(callers: list[Any], inputs: dict[str, Any], duration: float) -> tuple[list[float], float]:
    """Each caller calls infer back to back until the deadline; latencies of all, wall time."""
    clock = time.perf_counter
    lats: list[list[float]] = [[] for _ in callers]
    barrier = threading.Barrier(len(callers))  # the callers start together

    def loop(k: int) -> None:
        infer, lat = callers[k], lats[k]
        barrier.wait()
        now = clock()
        deadline = now + duration
        while now < deadline:
            t0 = now
            infer(inputs)
            now = clock()
            lat.append((now - t0) * 1000.0)

    start = clock()
    if len(callers) == 1:
        loop(0)  # one caller: on this thread, as the OpenVINO worker does
    else:
        threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(len(callers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return [v for lat in lats for v in lat], clock() - start


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    from hosttune.errors import HosttuneError
    from hosttune.serve.placement import bind_memory, pin_cpus

    cpus = cfg.get("cpus")
    try:
        if cpus:
            cpus = pin_cpus(cpus, where="cpus")
    except HosttuneError as exc:
        _emit({"event": "error", "kind": "placement", "error": str(exc)})
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    mem_bound = bool(cfg.get("mems") and cfg.get("multi_node") and bind_memory(cfg["mems"]))
    import numpy as np

    from hosttune.bench.runtimes.base import MissingExtra

    with np.load(cfg["inputs_path"]) as z:
        count = int(z["count"])
        samples = [{k.split("__", 1)[1]: z[k] for k in z.files if k.startswith(f"s{i}__")} for i in range(count)]
    rss_before = _rss_mb()
    before = _tids()
    module = cfg["module"]
    try:
        runtime = importlib.import_module(module)
        loaded = runtime.load(cfg["model_path"], cpus, cfg.get("options") or {}, cfg["cache_dir"])
        infer = loaded.new_caller()
        t0 = time.perf_counter()
        first = infer(samples[0])
        first_ms = (time.perf_counter() - t0) * 1000.0
        outs = [first] + [infer(s) for s in samples[1:]]
    except MissingExtra as exc:
        _emit({"event": "error", "kind": "missing", "error": str(exc)})
        return 2
    except ImportError as exc:
        _emit({"event": "error", "kind": "missing", "error": f"{exc}"})
        return 2
    except Exception as exc:  # noqa: BLE001 - any load/compile failure is this runtime's row
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        _emit({"event": "error", "kind": "load", "error": f"cannot load the model: {text}"})
        return 2
    np.savez(cfg["outputs_path"], count=len(outs),
             **{f"s{i}__{j}": np.asarray(o) for i, out in enumerate(outs) for j, o in enumerate(out)})
    new = sorted(_tids() - before)
    callers = {1: [infer]}
    warm, _ = timed(callers[1], samples[0], float(cfg.get("warmup_s", 1.0)))
    threads = [{"tid": t, "name": _comm(t), "cpus": _allowed(t)} for t in new]
    _emit({"event": "ready", "pid": os.getpid(), "cpus": cpus, "mem_bound": mem_bound,
           "load_s": loaded.load_s, "compile_s": loaded.compile_s, "first_ms": first_ms,
           "settings": loaded.settings, "notes": loaded.notes, "threads_expected": loaded.threads_expected,
           "threads_started": threads, "rss_before_mb": round(rss_before, 1), "rss_mb": round(_rss_mb(), 1),
           "peak_rss_mb": round(_peak_mb(), 1), "warmup_count": len(warm)})
    duration = float(cfg.get("duration_s", 10.0))
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "go":
            break
        level = int(parts[1]) if len(parts) > 1 else 1
        if level not in callers:
            callers[level] = [infer] + [loaded.new_caller() for _ in range(level - 1)]
        lat, elapsed = timed(callers[level], samples[0], duration)
        _emit({"event": "run", "latencies_ms": [round(v, 4) for v in lat], "elapsed_s": elapsed,
               "peak_rss_mb": round(_peak_mb(), 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
