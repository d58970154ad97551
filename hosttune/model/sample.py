"""The sample model: a small ResNet-style image classifier built with OpenVINO's opset API.

No download: the graph is built here, the weights come from a seeded generator, so two builds are
bit-identical. Variants trade size for speed: `sample` costs a few milliseconds per inference on
one core (about 0.19 G multiply-adds), `tiny` is for tests, `trivial` (one Add) measures the
server alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SEED = 20240607


@dataclass(frozen=True)
class Variant:
    size: int  # input is [1, 3, size, size]
    widths: tuple[int, ...]  # channels of each stage; stage i > 0 halves the resolution
    blocks: int  # residual blocks per stage
    classes: int


VARIANTS = {
    "sample": Variant(size=112, widths=(32, 64, 128, 256), blocks=1, classes=1000),
    "tiny": Variant(size=32, widths=(8, 16), blocks=1, classes=10),
}
NAMES = tuple(VARIANTS) + ("trivial",)


def build(variant: str = "sample", seed: int = SEED) -> Any:
    """Return an `openvino.Model`. Input `input` f32 [1,3,S,S]; output `probabilities` f32 [1,classes]."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    if variant == "trivial":
        x = ops.parameter([1, 16], np.float32, name="input")
        x.output(0).get_tensor().set_names({"input"})
        y = ops.add(x, ops.constant(np.ones([1, 16], np.float32)), name="output")
        y.output(0).get_tensor().set_names({"output"})
        return ov.Model([y], [x], "trivial")
    if variant not in VARIANTS:
        raise ValueError(f"unknown sample variant {variant!r} (known: {', '.join(NAMES)})")
    v = VARIANTS[variant]
    rng = np.random.default_rng(seed)

    def conv(x: Any, cin: int, cout: int, k: int, stride: int, relu: bool = True) -> Any:
        # He-normal weights keep activations in a stable range through the depth (as folded BN would)
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal((1, cout, 1, 1)) * 0.01).astype(np.float32)
        pad = k // 2
        y = ops.convolution(x, ops.constant(w), [stride, stride], [pad, pad], [pad, pad], [1, 1])
        y = ops.add(y, ops.constant(b))
        return ops.relu(y) if relu else y

    def block(x: Any, cin: int, cout: int, stride: int) -> Any:
        y = conv(x, cin, cout, 3, stride)
        y = conv(y, cout, cout, 3, 1, relu=False)
        shortcut = x if (cin == cout and stride == 1) else conv(x, cin, cout, 1, stride, relu=False)
        return ops.relu(ops.add(y, shortcut))

    x = ops.parameter([1, 3, v.size, v.size], np.float32, name="input")
    x.output(0).get_tensor().set_names({"input"})
    y = conv(x, 3, v.widths[0], 3, 2)
    cin = v.widths[0]
    for stage, width in enumerate(v.widths):
        for i in range(v.blocks):
            y = block(y, cin, width, 2 if (stage > 0 and i == 0) else 1)
            cin = width
    y = ops.reduce_mean(y, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    w = (rng.standard_normal((cin, v.classes)) * np.sqrt(1.0 / cin)).astype(np.float32)
    y = ops.matmul(y, ops.constant(w), False, False)
    y = ops.add(y, ops.constant(np.zeros((1, v.classes), np.float32)))
    y = ops.softmax(y, 1, name="probabilities")
    y.output(0).get_tensor().set_names({"probabilities"})
    return ov.Model([y], [x], f"hosttune-{variant}")


def calibration_inputs(model: Any, count: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Synthetic calibration samples for a model with static input shapes: smooth random images in
    [0, 1] (low-frequency noise, closer to natural images than white noise)."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    samples = []
    for _ in range(count):
        sample = {}
        for port in model.inputs:
            shape = [int(d) for d in port.get_partial_shape().to_shape()]
            dtype = port.get_element_type().to_dtype()
            if len(shape) == 4 and shape[2] >= 8 and shape[3] >= 8:
                coarse = rng.random((shape[0], shape[1], shape[2] // 8 + 1, shape[3] // 8 + 1))
                data = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :shape[2], :shape[3]]
                data = data + rng.normal(0, 0.05, size=shape)
            else:
                data = rng.random(shape)
            sample[port.get_any_name()] = data.astype(dtype)
        samples.append(sample)
    return samples


def build_onnx(variant: str = "sample", seed: int = SEED) -> Any:
    """The same network as `build` (same graph, same seeded weights in the same order) as an
    `onnx.ModelProto`, for the runtimes that read ONNX only (`hosttune bench --runtime`).
    Needs the `onnx` package; `build` stays the source of truth (a test compares the outputs)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []

    def const(arr: Any) -> str:
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(op: str, ins: list[str], **attrs: Any) -> str:
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    if variant == "trivial":
        nodes.append(helper.make_node("Add", ["input", const(np.ones([1, 16], np.float32))], ["output"]))
        graph = helper.make_graph(nodes, "trivial",
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16])],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16])], inits)
    else:
        if variant not in VARIANTS:
            raise ValueError(f"unknown sample variant {variant!r} (known: {', '.join(NAMES)})")
        v = VARIANTS[variant]
        rng = np.random.default_rng(seed)

        def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool = True) -> str:
            w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
            b = (rng.standard_normal((1, cout, 1, 1)) * 0.01).astype(np.float32)
            pad = k // 2
            y = node("Conv", [x, const(w)], strides=[stride, stride], pads=[pad, pad, pad, pad])
            y = node("Add", [y, const(b)])
            return node("Relu", [y]) if relu else y

        def block(x: str, cin: int, cout: int, stride: int) -> str:
            y = conv(x, cin, cout, 3, stride)
            y = conv(y, cout, cout, 3, 1, relu=False)
            shortcut = x if (cin == cout and stride == 1) else conv(x, cin, cout, 1, stride, relu=False)
            return node("Relu", [node("Add", [y, shortcut])])

        y = conv("input", 3, v.widths[0], 3, 2)
        cin = v.widths[0]
        for stage, width in enumerate(v.widths):
            for i in range(v.blocks):
                y = block(y, cin, width, 2 if (stage > 0 and i == 0) else 1)
                cin = width
        y = node("ReduceMean", [y], axes=[2, 3], keepdims=0)
        w = (rng.standard_normal((cin, v.classes)) * np.sqrt(1.0 / cin)).astype(np.float32)
        y = node("MatMul", [y, const(w)])
        y = node("Add", [y, const(np.zeros((1, v.classes), np.float32))])
        nodes.append(helper.make_node("Softmax", [y], ["probabilities"], axis=1))
        graph = helper.make_graph(
            nodes, f"hosttune-{variant}",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, v.size, v.size])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, v.classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hosttune")
    model.ir_version = 8  # readable by every runtime here (ONNX Runtime, OpenVINO, TVM)
    onnx.checker.check_model(model)
    return model
