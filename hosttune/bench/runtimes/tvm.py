"""Apache TVM: Relax ONNX frontend, `llvm` target for the host CPU, Relax VM, **untuned**.

Compiled once per model hash + target and cached as a shared library under the cache directory
(`<cache>/tvm/<sha256 of model and target>.so`); a cached library is loaded, not rebuilt. The
target is TVM 0.27's JSON form `{"kind": "llvm", "mcpu": <host CPU from LLVM>, "num-cores": N}`.
Threads: TVM_NUM_THREADS = the instance's cores and TVM_BIND_THREADS=0 (set before the import),
so TVM's pool threads keep the process's cpuset instead of TVM choosing CPUs itself. The default
(untuned) CPU pipeline emits serial loops: TVM then runs on the calling thread only, which the
report records (`threads_started`). MetaSchedule tuning is not run: it crashed here (GUIDE).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from hosttune.bench.runtimes.base import Loaded, MissingExtra

NAME = "tvm"
EXTRA = "tvm"


def _hash(model_path: str, target: dict[str, Any], version: str) -> str:
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps({"target": target, "tvm": version}, sort_keys=True).encode())
    return h.hexdigest()


def load(model_path: str, cpus: list[int], options: dict[str, Any], cache_dir: str) -> Loaded:
    cores = max(1, len(cpus))
    os.environ["TVM_NUM_THREADS"] = str(cores)
    os.environ["TVM_BIND_THREADS"] = "0"
    try:
        import numpy as np
        import tvm
        from tvm import relax
    except ImportError:
        raise MissingExtra("apache-tvm is not installed: pip install 'hosttune[tvm]'") from None
    from tvm.target import codegen

    target_dict = {"kind": "llvm", "mcpu": options.get("mcpu") or codegen.llvm_get_system_cpu(), "num-cores": cores}
    key = _hash(model_path, target_dict, tvm.__version__)
    lib_dir = os.path.join(cache_dir, "tvm")
    os.makedirs(lib_dir, exist_ok=True)
    lib_path = os.path.join(lib_dir, key + ".so")
    start = time.perf_counter()
    compile_s = None
    cached = os.path.exists(lib_path)
    if not cached:
        try:
            import onnx
            from tvm.relax.frontend.onnx import from_onnx
        except ImportError:
            raise MissingExtra("TVM's ONNX frontend needs the onnx package: pip install onnx") from None
        model = onnx.load(model_path)
        shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
        mod, params = relax.frontend.detach_params(mod)
        if params.get("main"):
            raise RuntimeError("the model keeps parameters as inputs; not supported")
        t0 = time.perf_counter()
        executable = tvm.compile(mod, target=tvm.target.Target(target_dict))
        compile_s = time.perf_counter() - t0
        tmp = f"{lib_path}.{os.getpid()}.tmp.so"
        executable.export_library(tmp)
        os.replace(tmp, lib_path)  # two benchmarks compiling at once: the last complete one wins
    lib = tvm.runtime.load_module(lib_path)
    dev = tvm.cpu()
    load_s = time.perf_counter() - start
    names = list(options.get("input_names") or [])  # the VM's main takes the ONNX inputs in graph order

    def new_caller() -> Any:
        vm = relax.VirtualMachine(lib, dev)
        fn = vm["main"]

        def infer(inputs: dict[str, Any]) -> list[Any]:
            out = fn(*[tvm.runtime.tensor(inputs[n], dev) for n in names])
            items = [out] if hasattr(out, "numpy") else list(out)  # one tensor or a tuple of them
            return [np.asarray(o.numpy()) for o in items]
        return infer

    settings = {"target": target_dict, "tuned": False, "label": "untuned", "TVM_NUM_THREADS": cores,
                "TVM_BIND_THREADS": 0, "cache": lib_path, "cached": cached, "version": tvm.__version__}
    return Loaded(new_caller, load_s, compile_s=compile_s, settings=settings, threads_expected=None,
                  notes=["untuned (default Relax CPU pipeline, no MetaSchedule)"])
