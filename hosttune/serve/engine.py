"""The OpenVINO side of the server: a model compiled once with the instance's settings, and a pool
of infer requests sized to its streams. Requests wait for an idle infer request on an asyncio queue
(the event loop never blocks) and run through `start_async`; a waiter thread per infer request
blocks in `wait()` and wakes the waiting coroutine, so as many requests run in parallel as the pool
holds. (Not OpenVINO's completion callback: the Python binding never calls it when the inference
fails, which would leave the request hanging and the infer request lost to the pool.) A pool of one (one
stream) runs the inference inline on the event loop thread instead: nothing could run beside it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hosttune.errors import HosttuneError
from hosttune.serve import MAX_NIREQ
from hosttune.serve.placement import Threads
from hosttune.model.repo import ModelEntry, ov_error_text, read_model
from hosttune.model.types import KSERVE_TO_NUMPY, kserve_datatype
from hosttune.serve.ovms_config import IOConfig


class InputError(ValueError):
    """A request the model cannot take (shape, datatype, missing input): a 400 for the client."""


@dataclass
class Port:
    name: str
    datatype: str  # KServe datatype
    dtype: Any  # numpy dtype
    shape: list[int] | None  # -1 for dynamic dimensions; None for a dynamic rank
    index: int

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape if self.shape is not None else [-1]}

    def check(self, shape: list[int]) -> None:
        if self.shape is None:
            return
        if len(shape) != len(self.shape) or any(want not in (-1, got) for want, got in zip(self.shape, shape)):
            raise InputError(f"input {self.name!r}: shape {shape} does not match the model's {self.shape}")


def _port(port: Any, index: int) -> Port:
    import numpy as np

    ps = port.get_partial_shape()
    shape = [int(d.get_length()) if d.is_static else -1 for d in ps] if ps.rank.is_static else None
    try:
        datatype = kserve_datatype(port.get_element_type())
    except ValueError:
        datatype = str(port.get_element_type())
    return Port(port.get_any_name(), datatype, np.dtype(port.get_element_type().to_dtype()), shape, index)


def _find_port(model: Any, name: str | None, where: str, outputs: bool = False) -> Any:
    """The input (or, for a layout, also output) called `name`; None: the model's only input."""
    if name is None:
        if len(model.inputs) != 1:
            raise HosttuneError(f"the model has {len(model.inputs)} inputs: give a map {{input: ...}}", where=where)
        return model.inputs[0]
    for port in [*model.inputs, *(model.outputs if outputs else [])]:
        if name in port.get_names():
            return port
    names = ", ".join(p.get_any_name() for p in [*model.inputs, *(model.outputs if outputs else [])])
    raise HosttuneError(f"the model has no {'input or output' if outputs else 'input'} {name!r} ({names})", where=where)


def apply_io(model: Any, io: IOConfig, where: str) -> None:
    """config.json's shape, batch_size and layout on the read model, before it is compiled (as OVMS:
    shape and batch_size are the model's own dimensions, then "TENSOR:MODEL" layouts add the
    transposition so that clients send TENSOR). "auto" (OVMS reloads the model for each new shape)
    compiles once with those dimensions dynamic: the same requests are taken, metadata shows -1."""
    import openvino as ov

    def dim(lo: int, hi: int) -> Any:
        return ov.Dimension() if lo == -1 else ov.Dimension(lo) if lo == hi else ov.Dimension(lo, hi)

    model_layouts = {}
    for name, (_, model_layout) in io.layouts:
        model_layouts[_find_port(model, name, f"{where}.layout", outputs=True).get_any_name()] = model_layout
    shapes = {}
    for name, dims in io.shapes:
        port = _find_port(model, name, f"{where}.shape")
        rank = port.get_partial_shape().rank
        if dims == "auto":
            if rank.is_dynamic:
                continue
            dims = ((-1, -1),) * rank.get_length()
        shapes[port.get_any_name()] = ov.PartialShape([dim(lo, hi) for lo, hi in dims])
    if io.batch is not None:
        lo, hi = (-1, -1) if io.batch == "auto" else io.batch
        for port in model.inputs:
            ps = port.get_partial_shape()
            layout = model_layouts.get(port.get_any_name(), "")
            index = layout.index("N") if "N" in layout.split("...")[0] else 0
            if ps.rank.is_dynamic or ps.rank.get_length() <= index:
                raise HosttuneError(f"input {port.get_any_name()!r} has no batch dimension {index}", where=f"{where}.batch_size")
            ps[index] = dim(lo, hi)
            shapes[port.get_any_name()] = ps
    try:
        if shapes:
            model.reshape(shapes)
        if io.layouts:
            ppp = ov.preprocess.PrePostProcessor(model)
            for name, (tensor_layout, model_layout) in io.layouts:
                port = _find_port(model, name, f"{where}.layout", outputs=True)
                is_input = any(port.get_node() == p.get_node() for p in model.inputs)
                side = ppp.input(port.get_any_name()) if is_input else ppp.output(port.get_any_name())
                side.model().set_layout(ov.Layout(model_layout))
                if tensor_layout is not None:
                    side.tensor().set_layout(ov.Layout(tensor_layout))
            ppp.build()
    except HosttuneError:
        raise
    except Exception as exc:
        given = {"shape": io.shapes, "batch_size": io.batch is not None, "layout": io.layouts}
        what = "/".join(k for k, v in given.items() if v)
        raise HosttuneError(f"OpenVINO cannot apply it: {ov_error_text(exc, 300)}", where=f"{where}.{what}") from None


class ServedModel:
    def __init__(self, core: Any, entry: ModelEntry, config: dict[str, Any], nireq: int | None = None,
                 io: IOConfig | None = None, placed: Threads | None = None):
        if nireq is not None and not 1 <= nireq <= MAX_NIREQ:  # each infer request holds its tensors
            raise HosttuneError(f"must be 1 to {MAX_NIREQ}, got {nireq}", where=f"nireq of {entry.name}")
        self.name = entry.name
        self.version = entry.version
        self.path = entry.path
        self.meta = entry.meta
        model = read_model(core, entry.path)
        if io is not None:
            apply_io(model, io, f"{entry.path}: config")
        self.io = io
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise HosttuneError(f"cannot compile on CPU with {config}: {ov_error_text(exc, 400)}",
                                where=entry.path) from None
        self.config = config
        optimal = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.nireq = max(1, nireq or optimal)
        self.inputs = [_port(p, i) for i, p in enumerate(self.compiled.inputs)]
        self.outputs = [_port(p, i) for i, p in enumerate(self.compiled.outputs)]
        self._inputs_by_name = {p.name: p for p in self.inputs}
        for i, p in enumerate(self.compiled.inputs):  # every tensor name of a port is accepted
            for alias in p.get_names():
                self._inputs_by_name.setdefault(alias, self.inputs[i])
        self.outputs_by_name = {p.name: p for p in self.outputs}
        for i, p in enumerate(self.compiled.outputs):
            for alias in p.get_names():
                self.outputs_by_name.setdefault(alias, self.outputs[i])
        self._requests = [self.compiled.create_infer_request() for _ in range(self.nireq)]
        # A static input is copied into its infer request's own tensor, through a numpy view kept
        # here (the request owns that memory and keeps it: no other tensor is ever set for such an
        # input). Wrapping each request's data in a new ov.Tensor instead costs ~14 us of
        # set_input_tensor checks between inferences on the development VM, more than the copy:
        # in-process the sample model's inference was 10-25 us slower that way (through the server
        # the difference was within the noise, 0.877 against 0.882 ms). A dynamic input is shared.
        self._input_views = [[self._own_view(req, port) for port in self.inputs] for req in self._requests]
        # the waiters only block in wait() and wake the loop: service threads, off the inference CPUs
        init, initargs = (placed or Threads()).initializer("hosttune-wait")
        self._waiter = ThreadPoolExecutor(max_workers=self.nireq, thread_name_prefix=f"wait-{self.name}",
                                          initializer=init, initargs=initargs)
        self._idle: asyncio.Queue[int] | None = None
        self.active = 0

    @staticmethod
    def _own_view(req: Any, port: Port) -> Any:
        if port.shape is None or -1 in port.shape:
            return None
        view = req.get_input_tensor(port.index).data
        return view if view.dtype == port.dtype and list(view.shape) == port.shape and view.flags.writeable else None

    def _set_inputs(self, index: int, tensors: list[Any]) -> None:
        import openvino as ov

        req = self._requests[index]
        for i, (view, arr) in enumerate(zip(self._input_views[index], tensors)):
            if view is not None:
                view[...] = arr
            else:
                req.set_input_tensor(i, ov.Tensor(arr, shared_memory=arr.flags.writeable))

    def input(self, name: str) -> Port:
        try:
            return self._inputs_by_name[name]
        except KeyError:
            raise InputError(f"model {self.name!r} has no input {name!r} (inputs: "
                             f"{', '.join(p.name for p in self.inputs)})") from None

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name, "versions": [str(self.version)], "platform": "OpenVINO",
            "inputs": [p.describe() for p in self.inputs], "outputs": [p.describe() for p in self.outputs],
        }

    def queue_size(self) -> int:
        return self._idle.qsize() if self._idle is not None else self.nireq

    async def infer(self, tensors: list[Any], timings: dict[str, float] | None = None) -> list[Any]:
        """Run one inference; `tensors` are numpy arrays in the model's input order.
        Returns copies of the outputs (the infer request is reused at once)."""
        if self.nireq == 1:
            return self.infer_now(tensors, timings)
        if self._idle is None:
            self._idle = asyncio.Queue()
            for i in range(self.nireq):
                self._idle.put_nowait(i)
        t0 = time.perf_counter()
        index = await self._idle.get()
        t1 = time.perf_counter()
        self.active += 1
        req = self._requests[index]
        try:
            self._set_inputs(index, tensors)
            req.start_async()
            await asyncio.get_running_loop().run_in_executor(self._waiter, req.wait)  # raises OpenVINO's error
            outputs = [req.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]
        finally:
            self.active -= 1
            self._idle.put_nowait(index)
        if timings is not None:
            timings["wait_us"] = (t1 - t0) * 1e6
            timings["infer_us"] = (time.perf_counter() - t1) * 1e6
        return outputs

    def infer_now(self, tensors: list[Any], timings: dict[str, float] | None = None) -> list[Any]:
        """infer for a pool of one (one stream, LATENCY): requests are serialized anyway, so the
        inference runs right here on the event loop thread. This saves the hand-off to an OpenVINO
        thread and back (two context switches, ~0.1-0.2 ms when the instance has a single CPU)."""
        if self.nireq != 1:  # the pool's requests belong to infer's queue
            raise RuntimeError(f"infer_now: model {self.name!r} has a pool of {self.nireq}; use infer")
        t1 = time.perf_counter()
        req = self._requests[0]
        self.active += 1
        try:
            self._set_inputs(0, tensors)
            req.infer()
            outputs = [req.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]
        finally:
            self.active -= 1
        if timings is not None:
            timings["wait_us"] = 0.0
            timings["infer_us"] = (time.perf_counter() - t1) * 1e6
        return outputs


def to_array(port: Port, datatype: str, shape: list[int], data: Any, raw: bytes | None) -> Any:
    """Build the numpy input from a KServe tensor (JSON `data` or binary bytes) after checking it."""
    import numpy as np

    if datatype != port.datatype:
        if datatype not in KSERVE_TO_NUMPY:
            raise InputError(f"input {port.name!r}: unsupported datatype {datatype!r}")
        raise InputError(f"input {port.name!r}: datatype {datatype} does not match the model's {port.datatype}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InputError(f"input {port.name!r}: shape must be a list of non-negative integers")
    port.check(shape)
    count = 1
    for d in shape:
        count *= d
    if raw is not None:
        if len(raw) != count * port.dtype.itemsize:
            raise InputError(f"input {port.name!r}: {len(raw)} bytes of binary data, shape {shape} "
                             f"{datatype} needs {count * port.dtype.itemsize}")
        return np.frombuffer(raw, dtype=port.dtype).reshape(shape)
    if data is None:
        raise InputError(f"input {port.name!r}: no data (give \"data\" or binary_data_size)")
    if isinstance(data, np.ndarray):  # JSON numbers decoded straight into float64/int64/uint64
        if port.dtype.kind in "iu" and data.size:
            info = np.iinfo(port.dtype)
            if data.min() < info.min or data.max() > info.max:
                raise InputError(f"input {port.name!r}: values outside the {datatype} range")
        arr = data.astype(port.dtype, copy=False)
    else:
        try:
            arr = np.asarray(data, dtype=port.dtype)
        except (ValueError, TypeError, OverflowError):
            raise InputError(f"input {port.name!r}: data is not a (nested) list of {datatype} values") from None
    if arr.size != count:
        raise InputError(f"input {port.name!r}: {arr.size} values, shape {shape} needs {count}")
    return np.ascontiguousarray(arr.reshape(shape))
