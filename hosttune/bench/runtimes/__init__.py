"""`hosttune bench --runtime openvino,onnxruntime,tvm`: several runtimes on the same ONNX model, the
same instance cpuset and memory node, interleaved rounds, one report.

Each runtime runs in its own worker process (worker.py), loaded one after the other; the timed
runs are interleaved (round k runs every runtime once, in a rotating order, never two at once on
the same CPUs). Before timing, every runtime's outputs on the same seeded inputs are compared with
OpenVINO FP32 (INFERENCE_PRECISION_HINT f32) within rtol/atol; a disagreement is a finding in the
row, not a failure. A runtime that is not installed, cannot load the model or crashes is one line
in its row; the others are measured. The runtime choice is a plain string in the config
(`config["runtimes"]`), the dimension a future `hosttune tune` varies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from hosttune.errors import HosttuneError

# runtime name -> module; `name:option` selects a variant (onnxruntime:parallel)
MODULES = {"openvino": "hosttune.bench.runtimes.openvino", "onnxruntime": "hosttune.bench.runtimes.onnxruntime",
           "tvm": "hosttune.bench.runtimes.tvm"}
OPTIONS = {"openvino": (), "onnxruntime": ("parallel",), "tvm": ()}
RTOL, ATOL = 1e-3, 1e-5  # FP32 runtimes differ in summation order and fused kernels, not more
CHECK_SAMPLES = 4


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hosttune")


def parse(spec: str) -> list[str]:
    """`openvino,onnxruntime,tvm` -> the list, each checked; `onnxruntime:parallel` is a variant."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, option = part.partition(":")
        if name not in MODULES:
            raise HosttuneError(f"unknown runtime {name!r} (known: {', '.join(MODULES)})", where="--runtime")
        if option and option not in OPTIONS[name]:
            raise HosttuneError(f"runtime {name} has no option {option!r} "
                                f"(options: {', '.join(OPTIONS[name]) or 'none'})", where="--runtime")
        if part in out:
            raise HosttuneError(f"{part} given twice", where="--runtime")
        out.append(part)
    if not out:
        raise HosttuneError("name at least one runtime", where="--runtime")
    return out


def parse_levels(spec: str | None) -> list[int]:
    try:
        levels = [int(p) for p in (spec or "1").split(",") if p.strip()]
    except ValueError:
        raise HosttuneError(f"{spec!r} is not a list of integers like 1,2", where="--inflight") from None
    if not levels or any(v < 1 for v in levels) or len(set(levels)) != len(levels):
        raise HosttuneError("distinct positive integers like 1,2", where="--inflight")
    return levels


def onnx_for(entry: Any, cache_dir: str) -> tuple[str | None, str]:
    """The ONNX form of a repository model and where it came from; (None, why) when there is none.
    The entry itself (.onnx), a model.onnx beside its IR, the ONNX file it was prepared from (if it
    is unchanged: same sha256), or, for the sample models, the same network exported as ONNX."""
    if entry.path.endswith(".onnx"):
        return entry.path, "the repository's model file"
    beside = os.path.join(entry.directory, "model.onnx")
    if os.path.exists(beside):
        return beside, "model.onnx beside the IR"
    meta = entry.meta or {}
    source = meta.get("source") or ""
    if source.endswith(".onnx") and os.path.exists(source):
        from hosttune.model.repo import _sha256

        if meta.get("source_sha256") and _sha256(source) == meta["source_sha256"]:
            return source, "the ONNX file it was prepared from"
        return None, f"its source {source} changed since it was prepared"
    if source.startswith("hosttune.model.sample:"):
        from hosttune.model import sample

        variant = source.split(":", 1)[1].split()[0]
        path = os.path.join(cache_dir, "onnx", f"sample-{variant}-{sample.SEED}.onnx")
        if not os.path.exists(path):
            try:
                import onnx
            except ImportError:
                return None, "the sample's ONNX export needs the onnx package (pip install onnx)"
            tmp = f"{path}.{os.getpid()}.tmp"
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                onnx.save(sample.build_onnx(variant), tmp)
                os.replace(tmp, path)
            except OSError as exc:
                raise HosttuneError(f"cannot write the sample's ONNX export: {exc.strerror}",
                                    where="--cache-dir") from None
        return path, f"hosttune.model.sample:{variant} exported as ONNX"
    return None, f"no ONNX form of model {entry.name!r} (prepared from {source or 'an unknown source'})"


@dataclass
class Row:
    """One runtime (or the INT8 IR) in the comparison."""
    runtime: str
    model_path: str | None
    status: str = "pending"  # measured | missing | load-failed | crashed | no-onnx
    error: str | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    runs: dict[int, list[list[float]]] = field(default_factory=dict)  # level -> latencies per run
    elapsed: dict[int, list[float]] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    proc: Any = None


def make_inputs(model_path: str, path: str, count: int = CHECK_SAMPLES) -> tuple[list[str], list[dict[str, Any]]]:
    """Seeded inputs for the correctness check and the timing (sample 0), from the ONNX model's
    input ports (dynamic dimensions as 1): smooth images for image-like inputs, as calibration does."""
    import numpy as np
    import openvino as ov

    from hosttune.model import sample
    from hosttune.model.repo import read_model

    model = read_model(ov.Core(), model_path)
    for port in model.inputs:
        ps = port.get_partial_shape()
        if not ps.is_static:
            model.reshape({port.get_any_name(): [d.get_length() if d.is_static else 1 for d in ps]})
    names = [p.get_any_name() for p in model.inputs]
    samples = sample.calibration_inputs(model, count)
    for s in samples:
        for n, arr in s.items():
            if arr.dtype.kind in "iub":
                s[n] = np.zeros_like(arr)  # an index-like input: zeros are always in range
    np.savez(path, count=count, **{f"s{i}__{n}": arr for i, s in enumerate(samples) for n, arr in s.items()})
    return names, samples


def make_inputs_onnx(model_path: str, path: str, count: int = CHECK_SAMPLES) -> list[str]:
    """Seeded inputs from the ONNX graph itself (the onnx package), for a model OpenVINO cannot
    read: the other runtimes are still measured, without an output check."""
    import numpy as np
    import onnx
    from onnx import helper

    graph = onnx.load(model_path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    rng = np.random.default_rng(sample_seed())
    arrays = {}
    names = []
    for inp in graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        shape = [d.dim_value or 1 for d in t.shape.dim]
        names.append(inp.name)
        for i in range(count):
            arrays[f"s{i}__{inp.name}"] = (rng.random(shape).astype(dtype) if dtype.kind == "f"
                                           else np.zeros(shape, dtype))
    np.savez(path, count=count, **arrays)
    return names


def sample_seed() -> int:
    from hosttune.model import sample

    return sample.SEED + 1


def reference(model_path: str, samples: list[dict[str, Any]]) -> list[list[Any]]:
    """OpenVINO FP32 outputs of the samples (f32 forced: a BF16-capable CPU would otherwise run BF16)."""
    import openvino as ov

    from hosttune.model.repo import read_model

    core = ov.Core()
    compiled = core.compile_model(read_model(core, model_path), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    req = compiled.create_infer_request()
    out = []
    for s in samples:
        req.infer(s)
        out.append([req.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))])
    return out


def check_outputs(ref: list[list[Any]], path: str, rtol: float, atol: float) -> dict[str, Any]:
    """Compare a worker's outputs with the reference: agree within rtol/atol on every element?"""
    import numpy as np

    with np.load(path) as z:
        got = [[z[f"s{i}__{j}"] for j in range(len(r))] for i, r in enumerate(ref)]
    worst_abs = worst_rel = 0.0
    bad = nonfinite = 0
    total = 0
    top1 = top1_total = 0
    for r, g in zip(ref, got):
        for a, b in zip(r, g):
            b = np.asarray(b)
            if a.shape != b.shape:
                return {"agree": False, "rtol": rtol, "atol": atol,
                        "finding": f"output shape {list(b.shape)} differs from OpenVINO's {list(a.shape)}"}
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            diff = np.abs(a64 - b64)
            # NaN/inf where the reference has a number: outside any tolerance, kept out of the
            # maxima (the document holds finite numbers only)
            finite = np.isfinite(diff)
            nonfinite += int((~finite).sum())
            diff = np.where(finite, diff, 0.0)
            worst_abs = max(worst_abs, float(diff.max(initial=0)))
            worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(a64), 1e-30)).max(initial=0)))
            bad += int((diff > atol + rtol * np.abs(a64)).sum()) + int((~finite).sum())
            total += diff.size
            if a.ndim == 2 and a.shape[1] > 1:
                top1 += int((a.argmax(1) == b.argmax(1)).sum())
                top1_total += a.shape[0]
    out = {"agree": bad == 0, "rtol": rtol, "atol": atol, "max_abs_diff": worst_abs, "max_rel_diff": worst_rel,
           "elements_outside": bad, "non_finite": nonfinite, "elements": total, "samples": len(ref)}
    if top1_total:
        out["top1_agreement"] = top1 / top1_total
    if bad:
        out["finding"] = (f"{bad} of {total} output elements outside rtol {rtol:g} / atol {atol:g} "
                          f"(max abs diff {worst_abs:.3g}"
                          + (f"; {nonfinite} not finite)" if nonfinite else ")"))
    return out


def start(rows: list[Row], target: Any, workdir: str, cache_dir: str, input_names: list[str], warmup_s: float,
          duration_s: float, pinned: bool, progress: Any) -> None:
    """Start the workers one at a time (loads and compiles do not compete for the CPUs) and read
    each one's `ready` line; a worker that fails becomes its row's one-line error."""
    from hosttune.bench.runner import _read_event

    for k, row in enumerate(rows):
        if row.status != "pending":
            continue
        name, _, option = row.runtime.partition(":")
        module = MODULES["openvino" if name == "openvino-int8" else name]
        options: dict[str, Any] = {"input_names": input_names, "pinned": pinned}
        if name in ("openvino", "openvino-int8"):
            config = dict(target.config)
            if not pinned:
                config["ENABLE_CPU_PINNING"] = False
            options["config"] = config
        if option:
            options["mode"] = option
        cfg = {"module": module, "options": options, "model_path": row.model_path,
               "cpus": target.cpus if pinned else None, "mems": target.info.get("mems"),
               "multi_node": target.info.get("multi_node"), "inputs_path": os.path.join(workdir, "inputs.npz"),
               "outputs_path": os.path.join(workdir, f"out{k}.npz"), "cache_dir": cache_dir,
               "warmup_s": warmup_s, "duration_s": duration_s}
        progress.show(f"loading {row.runtime}")
        row.proc = subprocess.Popen([sys.executable, "-m", "hosttune.bench.runtimes.worker", json.dumps(cfg)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        msg = _read_event(row.proc, progress)
        if msg.get("event") != "ready":
            row.status = {"missing": "missing", "load": "load-failed"}.get(msg.get("kind"), "crashed")
            row.error = msg.get("error") or "the worker failed"
            stop(row)
            continue
        row.ready = msg
        row.peak_rss_mb = msg.get("peak_rss_mb")
        row.status = "measured"


def stop(row: Row) -> None:
    proc, row.proc = row.proc, None
    if proc is None:
        return
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rounds(rows: list[Row], levels: list[int], runs: int, progress: Any) -> None:
    """Round k runs every (runtime, level) once, the runtimes in an order rotated by k."""
    from hosttune.bench.runner import _read_event

    for k in range(runs):
        live = [r for r in rows if r.status == "measured"]
        if not live:
            return
        order = live[k % len(live):] + live[:k % len(live)]
        for level in levels:
            for row in order:
                if row.status != "measured":
                    continue
                progress.show(f"run {k + 1}/{runs} {row.runtime} x{level}")
                try:
                    row.proc.stdin.write(f"go {level}\n")
                    row.proc.stdin.flush()
                except OSError:
                    pass
                msg = _read_event(row.proc, progress)
                if msg.get("event") != "run":
                    row.status, row.error = "crashed", f"crashed in run {k + 1}: {msg.get('error', 'no answer')}"
                    stop(row)
                    continue
                row.runs.setdefault(level, []).append(msg["latencies_ms"])
                row.elapsed.setdefault(level, []).append(msg["elapsed_s"])
                row.peak_rss_mb = msg.get("peak_rss_mb", row.peak_rss_mb)
