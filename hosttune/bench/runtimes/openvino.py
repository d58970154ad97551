"""OpenVINO, as `hosttune bench` runs it today: the plan instance's properties."""

from __future__ import annotations

import time
from typing import Any

from hosttune.bench.runtimes.base import Loaded

NAME = "openvino"
EXTRA = "serve"


def _type_name(value: Any) -> str:
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def load(model_path: str, cpus: list[int], options: dict[str, Any], cache_dir: str) -> Loaded:
    import numpy as np
    import openvino as ov

    config = dict(options.get("config") or {})
    start = time.perf_counter()
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model_path), "CPU", config)
    load_s = time.perf_counter() - start
    names = [p.get_any_name() for p in compiled.inputs]

    def new_caller() -> Any:
        req = compiled.create_infer_request()

        def infer(inputs: dict[str, Any]) -> list[Any]:
            req.infer({n: inputs[n] for n in names})
            return [np.array(req.get_output_tensor(i).data) for i in range(len(compiled.outputs))]
        return infer

    threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    settings = {"config": config, "threads": threads, "streams": int(compiled.get_property("NUM_STREAMS")),
                "pinning": bool(compiled.get_property("ENABLE_CPU_PINNING")),
                "inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
                "version": ov.get_version()}
    try:
        from hosttune.model.precision import runtime_precision

        settings["execution_precision"] = runtime_precision(compiled)["execution_precision"]
    except Exception:  # noqa: BLE001 - the precision is a detail; the benchmark goes on
        pass
    return Loaded(new_caller, load_s, settings=settings)
