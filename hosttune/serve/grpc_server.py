"""KServe v2 over gRPC (`inference.GRPCInferenceService`) beside REST: the same application
(hosttune/serve/app.py: models, checks, metrics), another wire.

    ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelInfer

The server is grpc.aio on the event loop that runs REST (hosttune/serve/run.py), not grpcio's
thread-pool server: a handler runs on the loop thread, so everything REST relies on holds for
gRPC too - the metrics are plain attributes without locks, a pool's infer requests wait on the
model's asyncio queue, a pool of one runs its inference inline (ServedModel.infer_now) - and no
request is handed to a worker thread and back (two context switches, and the interpreter lock
going back and forth with the loop). grpc's own threads start after the process is pinned, so
they run on the instance's CPUs (a test checks every thread's affinity).

Tensors go through the REST path's checks (engine.to_array: datatype, shape, element count,
integer range) with the same messages. Inputs come as `raw_input_contents` or as typed `contents`
(FP16 only raw, as the protocol says); outputs always go back as `raw_output_contents`, as OVMS
answers. Errors are the call's status, with the codes OVMS gives (its src/status.cpp): unknown
model or version NOT_FOUND, a version that is not a number and any bad input INVALID_ARGUMENT, an
inference that fails INTERNAL, a message above --max-body (typed contents above --max-json-body)
RESOURCE_EXHAUSTED. Metrics: OVMS's series with interface="gRPC".
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import grpc
import numpy as np

from hosttune import __version__, numbers
from hosttune.errors import HosttuneError
from hosttune.serve.app import App
from hosttune.serve.decode import HTTPError
from hosttune.serve.engine import InputError, ServedModel, to_array
from hosttune.serve.kserve import grpc_predict_v2_pb2 as pb
from hosttune.serve.kserve import grpc_predict_v2_pb2_grpc as pb_grpc
from hosttune.webconfig import WebConfig

# an HTTP status of the application's refusals -> the gRPC code OVMS gives for the same case
HTTP_TO_GRPC = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED}
# the typed-contents field of each datatype (FP16 has none: raw only)
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
# the numpy type a typed field is read into (to_array then casts, checking the integer range)
_READ_AS = {"bool_contents": np.bool_, "int_contents": np.int64, "int64_contents": np.int64,
            "uint_contents": np.uint64, "uint64_contents": np.uint64, "fp32_contents": np.float64,
            "fp64_contents": np.float64}
GRACE_SECONDS = 10  # in-flight calls get this long at a graceful stop, as REST's connections


class _Refused(Exception):
    """A call answered with a non-OK status (code, message)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def decode(model: ServedModel, request: Any) -> tuple[list, list]:
    """The input arrays in the model's order and the outputs to return, from a ModelInferRequest.
    Raises InputError (INVALID_ARGUMENT)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs (one each, in order)")
    arrays: list[Any] = [None] * len(model.inputs)
    for i, item in enumerate(request.inputs):
        port = model.input(item.name)
        if arrays[port.index] is not None:
            raise InputError(f"input {port.name!r} given twice")
        shape = list(item.shape)
        if raw:
            if item.HasField("contents"):
                raise InputError(f"input {port.name!r}: contents and raw_input_contents both given (one or the other)")
            arrays[port.index] = to_array(port, item.datatype, shape, None, raw[i])
            continue
        values = None
        if item.datatype == port.datatype:  # otherwise to_array refuses the datatype first
            field = CONTENTS_FIELD.get(item.datatype)
            if field not in _READ_AS:
                raise InputError(f"input {port.name!r}: {item.datatype} data must be in raw_input_contents")
            typed = getattr(item.contents, field)
            values = np.fromiter(typed, dtype=_READ_AS[field], count=len(typed))
        arrays[port.index] = to_array(port, item.datatype, shape, values, None)
    missing = [p.name for p in model.inputs if arrays[p.index] is None]
    if missing:
        raise InputError(f"missing input(s): {', '.join(missing)}")
    if not request.outputs:
        return arrays, list(model.outputs)
    selected = []
    for item in request.outputs:
        port = model.outputs_by_name.get(item.name)
        if port is None:
            raise InputError(f"unknown output {item.name!r} (outputs: {', '.join(p.name for p in model.outputs)})")
        if "classification" in item.parameters:
            raise InputError("the classification extension is not supported")
        selected.append(port)
    return arrays, selected


def encode(model: ServedModel, request: Any, selected: list, results: list) -> Any:
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for port in selected:
        arr = results[port.index]
        response.outputs.add(name=port.name, datatype=port.datatype, shape=arr.shape)
        response.raw_output_contents.append(arr.tobytes())
    return response


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six calls over the application's models and metrics."""

    def __init__(self, app: App):
        self.app = app
        self._bound: dict[tuple[str, int], dict] = {}  # per (name, version), as models come and go
        app.interfaces.add("gRPC")  # the series of models loaded later (hosttune/serve/reload.py)
        for model in app.served():  # every series exists from the first scrape, as in OVMS
            self.bound(model)

    def bound(self, model: ServedModel) -> dict:
        key = (model.name, model.version)
        if key not in self._bound:
            self._bound[key] = self.app.metrics.requests(model.name, model.version, "gRPC")
        return self._bound[key]

    def _model(self, name: str, version: str) -> ServedModel:
        if version and numbers.int_or_none(version) is None:  # OVMS: MODEL_VERSION_INVALID_FORMAT
            self.app.metrics.bad.labels("malformed").inc()
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"model version {version!r} is not a number")
        try:
            return self.app.find_model(name, version)
        except HTTPError as exc:
            self.app.metrics.bad.labels(exc.reason).inc()
            raise _Refused(HTTP_TO_GRPC.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message) from None

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.app.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="hosttune", version=__version__)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            model = self._model(request.name, request.version)
        except _Refused as exc:
            await context.abort(exc.code, exc.message)
        self.bound(model)["success"]["ModelReady"].inc()
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            model = self._model(request.name, request.version)
        except _Refused as exc:
            await context.abort(exc.code, exc.message)
        self.bound(model)["success"]["ModelMetadata"].inc()
        meta = model.metadata()
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            model = self._model(request.model_name, request.model_version)
        except _Refused as exc:
            await context.abort(exc.code, exc.message)
        if not request.raw_input_contents and request.ByteSize() > self.app.max_json:
            # typed contents cost a Python object per value to read, as JSON does: the same limit
            self.app.metrics.bad.labels("oversized").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"a request with typed contents of "
                                f"{request.ByteSize()} bytes exceeds the limit of {self.app.max_json}")
        app_bound = self.app.bound[(model.name, model.version)]
        bound = self.bound(model)
        t0 = time.perf_counter()
        app_bound["current"].inc()
        try:
            arrays, selected = decode(model, request)
            timings: dict[str, float] = {}
            if model.nireq == 1:
                results = model.infer_now(arrays, timings)
            else:
                results = await model.infer(arrays, timings)
            app_bound["inference_time"].observe(timings["infer_us"])
            app_bound["wait_time"].observe(timings["wait_us"])
            response = encode(model, request, selected, results)
        except Exception as exc:
            bound["fail"]["ModelInfer"].inc()
            if isinstance(exc, InputError):
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            else:  # an OpenVINO failure on valid input: the server keeps serving
                code, message = grpc.StatusCode.INTERNAL, f"inference failed: {str(exc).strip()[:300]}"
            await context.abort(code, message)
        finally:
            app_bound["current"].dec()
        bound["success"]["ModelInfer"].inc()
        bound["request_time"].observe((time.perf_counter() - t0) * 1e6)
        return response


class _BasicAuth(grpc.aio.ServerInterceptor):
    """The web config's basic auth for every call: the `authorization` metadata, as REST's header
    (every KServe v2 method is unary-unary); UNAUTHENTICATED otherwise."""

    def __init__(self, web: WebConfig):
        self.web = web

        async def deny(request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "basic auth with a user of the web config is needed")

        self.denied = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        auth = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if self.web.authorized(auth):
            return await continuation(details)
        return self.denied


def _credentials(web: WebConfig) -> Any:
    """The web config's certificate, key and client CA as gRPC server credentials."""
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    ca = read(web.client_ca_file) if web.client_ca_file else None
    return grpc.ssl_server_credentials([(read(web.key_file), read(web.cert_file))], root_certificates=ca,
                                       require_client_auth=web.tls is not None and web.tls.verify_mode == ssl.CERT_REQUIRED)


async def start(app: App, host: str, port: int, max_calls: int, web: WebConfig | None = None) -> tuple[Any, int]:
    """Listen on host:port (0: any free port) and serve on the running event loop; returns the
    server (stop it with `stop`) and the port. A port that cannot be bound is a HosttuneError.
    With `web`: TLS from its certificate and key, basic auth from its users."""
    interceptors = [_BasicAuth(web)] if web is not None and web.users else []
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener beside it
        ("grpc.max_receive_message_length", app.max_body),  # larger: RESOURCE_EXHAUSTED
        ("grpc.max_send_message_length", -1),
    ], maximum_concurrent_rpcs=max_calls)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(app), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if web is not None and web.tls is not None:
            bound = server.add_secure_port(address, _credentials(web))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise HosttuneError(f"cannot listen for gRPC on port {port} (in use, or the address is not this host's)",
                            where=f"--port {address}")
    await server.start()
    return server, bound


async def stop(server: Any) -> None:
    """Refuse new calls, answer those in flight (up to GRACE_SECONDS), close."""
    await server.stop(GRACE_SECONDS)
