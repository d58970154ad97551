"""What a compiled model really executes in, read from its runtime graph.

`compiled_model.get_runtime_model()` is the graph the CPU plugin runs after its transformations;
each node's rt_info carries `layerType` and `runtimePrecision`. A model whose quantized graph fell
back to floating point shows its Convolution / FullyConnected layers in f32 (or bf16) there.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hosttune.errors import HosttuneError

# layer types that carry the compute; their precision is the model's execution precision
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul",
                  "BinaryConvolution", "FullyConnectedCompressed", "GemmConvolution")
INT8_PRECISIONS = ("i8", "u8")
# an INT8 model must run at least this share of its compute layers in i8/u8
INT8_MIN_SHARE = 0.5
# OpenVINO element-type names -> the precision names hosttune reports
FLOAT_PRECISIONS = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}


def _text(value: Any) -> str:
    try:
        return str(value.astype(str))
    except AttributeError:
        return str(value)


def runtime_precision(compiled: Any) -> dict[str, Any]:
    """Summary of the compiled model's runtime graph: per compute-layer precision counts and the
    dominant execution precision ("INT8", "FP32", "BF16", "FP16")."""
    layers: Counter[str] = Counter()
    by_precision: Counter[str] = Counter()
    compute = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = _text(info["layerType"]) if "layerType" in info else op.get_type_name()
        precision = _text(info["runtimePrecision"]).lower() if "runtimePrecision" in info else "?"
        layers[layer_type] += 1
        if layer_type in COMPUTE_LAYERS:
            by_precision[precision] += 1
            compute.append({"name": op.get_friendly_name(), "type": layer_type, "precision": precision})
    total = sum(by_precision.values())
    int8 = sum(n for p, n in by_precision.items() if p in INT8_PRECISIONS)
    if not total:
        dominant = "none"
    elif int8 / total >= INT8_MIN_SHARE:
        dominant = "INT8"
    else:
        top = by_precision.most_common(1)[0][0]
        dominant = FLOAT_PRECISIONS.get(top, top.upper())
    return {
        "execution_precision": dominant,
        "compute_layers": total,
        "int8_layers": int8,
        "int8_share": round(int8 / total, 4) if total else 0.0,
        "by_precision": dict(sorted(by_precision.items())),
        "layer_types": dict(sorted(layers.items())),
        "compute": compute,
    }


def check_int8(compiled: Any, where: str = "model") -> dict[str, Any]:
    """Raise HosttuneError when a model that should be INT8 runs its compute in another precision."""
    summary = runtime_precision(compiled)
    if summary["execution_precision"] != "INT8":
        raise HosttuneError(
            f"the INT8 variant does not execute in INT8: {summary['int8_layers']} of "
            f"{summary['compute_layers']} compute layers run in i8/u8 (precisions: "
            f"{summary['by_precision'] or 'none'}); the quantized graph fell back to "
            f"{summary['execution_precision']}", where=where)
    return summary
