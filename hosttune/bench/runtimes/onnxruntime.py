"""ONNX Runtime, CPU execution provider, placed on the instance's CPUs.

intra_op_num_threads = the instance's cores, and explicit per-thread affinities through
`session.intra_op_thread_affinities`: one entry per intra-op thread except the caller's
(intra - 1 entries), CPU ids **1-based** (ORT's thread_utils.cc: "processor id in affinity string
starts from 1"; checked here: "2" put the thread on CPU 1). Without an explicit thread count ORT
sizes its pool from the machine, not from the affinity mask. With --no-pin (the unpinned
baseline) the thread count stays and no affinity is set. Option `parallel` runs
ORT_PARALLEL with inter_op_num_threads = cores (its inter-op threads inherit the cpuset).
"""

from __future__ import annotations

import time
from typing import Any

from hosttune.bench.runtimes.base import Loaded, MissingExtra

NAME = "onnxruntime"
EXTRA = "onnxruntime"


def affinity_string(cpus: list[int]) -> str:
    """One entry per intra-op thread except the caller's: the pool's threads get one CPU each
    (the cpuset's CPUs after the first, 1-based); the caller keeps the process's cpuset."""
    return ";".join(str(c + 1) for c in sorted(cpus)[1:])


def load(model_path: str, cpus: list[int], options: dict[str, Any], cache_dir: str) -> Loaded:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtra("onnxruntime is not installed: pip install 'hosttune[onnxruntime]'") from None
    parallel = options.get("mode") == "parallel"
    cores = max(1, len(cpus))
    so = ort.SessionOptions()
    so.intra_op_num_threads = cores
    so.inter_op_num_threads = cores if parallel else 1
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    affinity = affinity_string(cpus) if options.get("pinned", True) else ""  # --no-pin: the baseline
    if affinity:
        so.add_session_config_entry("session.intra_op_thread_affinities", affinity)
    start = time.perf_counter()
    session = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - start
    names = [i.name for i in session.get_inputs()]

    def new_caller() -> Any:
        def infer(inputs: dict[str, Any]) -> list[Any]:
            return session.run(None, {n: inputs[n] for n in names})
        return infer

    # the intra-op pool has cores - 1 threads (the caller is the first); ORT_PARALLEL adds an
    # inter-op pool of cores - 1 threads
    expected = (cores - 1) + ((cores - 1) if parallel else 0)
    settings = {"intra_op_num_threads": cores, "inter_op_num_threads": so.inter_op_num_threads,
                "execution_mode": "parallel" if parallel else "sequential", "graph_optimization_level": "all",
                "intra_op_thread_affinities": affinity or None, "version": ort.__version__}
    return Loaded(new_caller, load_s, settings=settings, threads_expected=expected)
