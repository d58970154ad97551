"""KServe v2 tensor datatypes <-> numpy dtypes <-> OpenVINO element types."""

from __future__ import annotations

# KServe v2 datatype -> numpy dtype name (BYTES is not supported by the OpenVINO CPU models we serve)
KSERVE_TO_NUMPY = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NUMPY_TO_KSERVE = {v: k for k, v in KSERVE_TO_NUMPY.items()}


def kserve_datatype(element_type: object) -> str:
    """The KServe datatype of an OpenVINO element type (e.g. f32 -> FP32)."""
    import numpy as np

    dtype = np.dtype(element_type.to_dtype())  # type: ignore[attr-defined]
    try:
        return NUMPY_TO_KSERVE[dtype.name]
    except KeyError:
        raise ValueError(f"element type {element_type} has no KServe datatype") from None
