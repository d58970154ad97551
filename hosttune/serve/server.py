"""`hosttune serve`: a KServe v2 REST inference server on the OpenVINO runtime.

A plain ASGI application on uvicorn (httptools parser, uvloop when installed): no web framework in
the request path. Endpoints (the ones OVMS speaks):

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{name}[/versions/{v}]            metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer      JSON tensors and the binary-data extension
    GET  /metrics                                    Prometheus (OVMS metric names)

Bad requests get a 4xx with `{"error": "..."}` and the server keeps serving. JSON is parsed by
simdjson with each input's numbers going straight into numpy (large bodies on a decoder thread)
and written by orjson; JSON has its own size limit below the body limit. The HTTP protocol adds
header/body read timeouts and a connection cap to uvicorn's (`protocol_class`), and the direct
lane: infer requests of a model with a pool of one are answered from the HTTP parser's callbacks,
through the same App.infer, without the ASGI cycle.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from hosttune import __version__
from hosttune.errors import HosttuneError
from hosttune.sdnotify import notify
from hosttune.serve.engine import InputError, ServedModel, to_array
from hosttune.serve.metrics import Metrics

DEFAULT_MAX_BODY = 64 * 2**20
# JSON is held to less: copying a JSON document's numbers out of the parser holds the interpreter
# lock (~15-60 ns per number), so the size of a JSON body bounds how long other requests wait
DEFAULT_MAX_JSON = 16 * 2**20
# JSON up to this size is decoded on the event loop (well under 0.1 ms: cheaper than a hand-off to
# the decoder thread); larger JSON on the decoder thread
JSON_INLINE_MAX = 64 * 2**10
# a thread's simdjson parser is kept for the next request up to this document size
PARSER_KEEP_MAX = 4 * 2**20
# a binary request's JSON header up to this size is remembered with the checks it passed (see
# App._decode): clients send the same header with every request
LAYOUT_HEADER_MAX = 4096
JSON_CT = (b"content-type", b"application/json")
HEADER_LEN = b"inference-header-content-length"
MODELS = "/v2/models/"


# (status, body, headers, close the connection after it)
Answer = tuple[int, "bytes | list[bytes]", list[tuple[bytes, bytes]], bool]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, reason: str = "bad_request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


class App:
    """The ASGI application."""

    def __init__(self, models: list[ServedModel], max_body: int = DEFAULT_MAX_BODY,
                 max_json: int = DEFAULT_MAX_JSON):
        self.models = {m.name: m for m in models}
        self.max_body = max_body
        self.max_json = max_json
        # large JSON bodies are decoded here; as many at once as requests can run in OpenVINO
        self._decoder = ThreadPoolExecutor(max_workers=max(m.nireq for m in models), thread_name_prefix="hosttune-json",
                                           initializer=_name_thread, initargs=("hosttune-json",))
        self.metrics = Metrics()
        self.bound = {m.name: self.metrics.model(m.name, m.version, m.streams, m.nireq, lambda m=m: m.active)
                      for m in models}
        # per model, the last binary request's JSON header, body length and what parse_request made
        # of them (see _decode)
        self._layouts: dict[str, tuple[bytes, int, Layout]] = {}
        self._decoding = 0  # JSON bodies on the decoder thread
        self.ready = True

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    def busy_elsewhere(self) -> bool:
        """Whether another thread works on a request (the JSON decoder, an infer request of a
        pool): an event loop polling beside it would take CPU time and the GIL from it."""
        return self._decoding > 0 or any(m.active and m.nireq > 1 for m in self.models.values())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        try:
            if path.startswith(MODELS):
                await self._model_route(scope, receive, send, method)
            elif path in ("/v2/health/live", "/v2/health/ready"):
                self._only(method, "GET", "HEAD")
                ok = path.endswith("live") or self.ready
                await _respond(send, 200 if ok else 503, b"")
            elif path in ("/v2", "/v2/"):
                self._only(method, "GET")
                await _json(send, 200, {"name": "hosttune", "version": __version__,
                                        "extensions": ["binary_tensor_data"]})
            elif path == "/metrics":
                self._only(method, "GET")
                body, ctype = self.metrics.render()
                await _respond(send, 200, body, [(b"content-type", ctype.encode())])
            else:
                raise HTTPError(404, f"no such endpoint: {path}", "not_found")
        except HTTPError as exc:
            await _respond(send, *self.refused(exc))

    def refused(self, exc: HTTPError) -> Answer:
        """The answer to a request refused before it reached a model (counted as such)."""
        self.metrics.bad.labels(exc.reason).inc()
        return exc.status, dumps({"error": exc.message}), [JSON_CT], exc.status == 413

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HTTPError(405, f"method {method} not allowed here (use {', '.join(allowed)})", "method")

    def route(self, path: str) -> tuple[ServedModel, str]:
        """The model and the action ("", "ready" or "infer") of a path below /v2/models/."""
        parts = unquote(path[len(MODELS):]).split("/")
        name, version = parts[0], None
        tail = parts[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version, tail = tail[1], tail[2:]
        if len(tail) > 1 or (tail and tail[0] not in ("", "ready", "infer")):
            raise HTTPError(404, f"no such endpoint: {path}", "not_found")
        model = self.models.get(name)
        if model is None:
            raise HTTPError(404, f"model {name!r} is not served here (models: {', '.join(self.models)})",
                            "unknown_model")
        if version not in (None, "", str(model.version)):
            raise HTTPError(404, f"model {name!r} version {version} is not served (version {model.version} is)",
                            "unknown_model")
        return model, tail[0] if tail else ""

    async def _model_route(self, scope: dict, receive: Any, send: Any, method: str) -> None:
        model, action = self.route(scope["path"])
        bound = self.bound[model.name]
        if action == "infer":
            self._only(method, "POST")
            body, header_len = await self._read_body(scope, receive)
            await _respond(send, *await self.infer(model, body, header_len))
        elif action == "ready":
            self._only(method, "GET", "HEAD")
            bound["success"]["ModelReady"].inc()
            await _json(send, 200, {"name": model.name, "ready": True})
        else:
            self._only(method, "GET")
            bound["success"]["ModelMetadata"].inc()
            await _json(send, 200, model.metadata())

    def body_limit(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, str, int | None, int | None]:
        """From a request's headers: the most its body may hold and what to call it in a 413, the
        declared Content-Length and the Inference-Header-Content-Length (None: the whole body is
        JSON). JSON is held to max_json, the whole body to max_body; a declared length beyond the
        limit is refused here, before the body is read."""
        length = header_len = None
        for key, value in headers:
            if key in (b"content-length", HEADER_LEN):
                try:
                    number = int(value)
                except ValueError:
                    number = -1
                if number < 0:
                    raise HTTPError(400, f"{key.decode()} is not a non-negative integer", "malformed")
                if key == HEADER_LEN:
                    header_len = number
                else:
                    length = number
        if header_len is None:
            limit, what = min(self.max_body, self.max_json), "JSON request body"
        else:
            limit, what = self.max_body, "request body"
            if header_len > self.max_json:
                raise HTTPError(413, f"JSON header of {header_len} bytes exceeds the limit of {self.max_json}",
                                "oversized")
        if length is not None and length > limit:
            raise HTTPError(413, f"{what} of {length} bytes exceeds the limit of {limit}", "oversized")
        return limit, what, length, header_len

    async def _read_body(self, scope: dict, receive: Any) -> tuple[bytes | bytearray, int | None]:
        """The body and the Inference-Header-Content-Length (None: the whole body is JSON), held to
        body_limit's limit while reading too (a chunked body has no declared length)."""
        limit, what, _, header_len = self.body_limit(scope["headers"])
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client disconnected", "disconnect")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"{what} exceeds the limit of {limit} bytes", "oversized")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        if header_len is None:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        else:  # writable, so that a dynamic input's tensor can share it (static ones are copied)
            body = bytearray().join(chunks)
        return body, header_len

    async def infer(self, model: ServedModel, body: bytes | bytearray, header_len: int | None) -> Answer:
        """The answer to an infer request whose body has been read. The one path of every infer
        request: the ASGI application's, and the direct lane's, which runs it to the end without a
        loop (for a pool of one and JSON decoded inline it never waits)."""
        if header_len is not None and header_len > len(body):
            return self.refused(HTTPError(400, f"Inference-Header-Content-Length {header_len} is outside the "
                                               f"body ({len(body)} bytes)", "malformed"))
        bound = self.bound[model.name]
        t0 = time.perf_counter()
        bound["current"].inc()
        try:
            try:
                response, binary = await self._run(body, header_len, model)
            except (InputError, HTTPError) as exc:
                bound["fail"]["ModelInfer"].inc()
                status = exc.status if isinstance(exc, HTTPError) else 400
                return status, dumps({"error": str(exc)}), [JSON_CT], False
            except Exception as exc:  # an OpenVINO failure on valid input: the server keeps serving
                bound["fail"]["ModelInfer"].inc()
                return 500, dumps({"error": f"inference failed: {str(exc).strip()[:300]}"}), [JSON_CT], False
            header = dumps(response)
            if binary:
                answer = (200, [header, *binary], [(b"content-type", b"application/octet-stream"),
                                                   (HEADER_LEN, str(len(header)).encode())], False)
            else:
                answer = (200, header, [JSON_CT], False)
            bound["success"]["ModelInfer"].inc()
            bound["request_time"].observe((time.perf_counter() - t0) * 1e6)
            return answer
        finally:
            bound["current"].dec()

    def _decode(self, model: ServedModel, body: bytes | bytearray, header_len: int | None) -> tuple[dict, list, list]:
        """parse_request, but a binary request whose JSON header and body length are those of the
        model's previous request (a client sends the same header every time) reuses what was made
        of them: the header passed the same checks then, only the input arrays are new views of
        this body. On the development VM this saved ~25 us of the ~30 us decode of the sample
        model's request: code that runs between inferences runs with cold caches."""
        key = bytes(body[:header_len]) if header_len is not None and header_len <= LAYOUT_HEADER_MAX else None
        last = self._layouts.get(model.name) if key is not None else None
        if last is not None and last[0] == key and last[1] == len(body):
            request, places, selected = last[2]
            import numpy as np

            view = memoryview(body)
            arrays = [np.frombuffer(view[start:start + size], dtype=dtype).reshape(shape)
                      for start, size, dtype, shape in places]
            return request, arrays, selected
        request, arrays, selected, places = parse_request(model, body, header_len)
        if key is not None and places is not None:
            self._layouts[model.name] = (key, len(body), (request, places, selected))
        return request, arrays, selected

    def lane(self, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[ServedModel, int | None] | None:
        """Whether a POST to `path` (undecoded) with these headers takes the direct lane: an infer
        request for a model with a pool of one, its length declared and within the limits, its
        JSON small enough to decode inline. Returns (model, header_len); None sends the
        request down the ASGI path, which also answers every error."""
        if not path.startswith(MODELS):
            return None
        try:
            model, action = self.route(path)
            _, _, length, header_len = self.body_limit(headers)
        except HTTPError:
            return None
        if action != "infer" or model.nireq != 1 or length is None:
            return None
        if (header_len if header_len is not None else length) > JSON_INLINE_MAX:
            return None
        return model, header_len

    async def _run(self, body: bytes | bytearray, header_len: int | None, model: ServedModel) -> tuple[dict, list[bytes]]:
        json_len = header_len if header_len is not None else len(body)
        if json_len <= JSON_INLINE_MAX:
            request, arrays, selected = self._decode(model, body, header_len)
        else:  # a large JSON body is decoded on a thread: health checks and other requests go on
            loop = asyncio.get_running_loop()
            self._decoding += 1
            try:
                request, arrays, selected, _ = await loop.run_in_executor(self._decoder, parse_request, model, body,
                                                                          header_len)
            finally:
                self._decoding -= 1
        timings: dict[str, float] = {}
        results = await model.infer(arrays, timings)
        bound = self.bound[model.name]
        bound["inference_time"].observe(timings["infer_us"])
        bound["wait_time"].observe(timings["wait_us"])
        outputs = []
        binary: list[bytes] = []
        for port, as_binary in selected:
            arr = results[port.index]
            out: dict[str, Any] = {"name": port.name, "datatype": port.datatype, "shape": list(arr.shape)}
            if as_binary:
                data = arr.tobytes()
                out["parameters"] = {"binary_data_size": len(data)}
                binary.append(data)
            else:
                out["data"] = arr.ravel()  # orjson writes numpy arrays itself (shortest repr per value)
            outputs.append(out)
        response: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version),
                                    "outputs": outputs}
        if "id" in request:
            response["id"] = request["id"]
        return response, binary


# -- request decoding (runs on the event loop for small bodies, on the decoder thread otherwise) ---
_NUMBER_KIND = {"FP16": "d", "FP32": "d", "FP64": "d", "INT8": "i", "INT16": "i", "INT32": "i", "INT64": "i",
                "UINT8": "u", "UINT16": "u", "UINT32": "u", "UINT64": "u"}
_BUFFER_DTYPE = {"d": "float64", "i": "int64", "u": "uint64"}
_parsers = threading.local()


def decode_json(head: bytes) -> dict[str, Any]:
    """The request's JSON as Python values, except each input's "data": a homogeneous (nested) list
    of numbers comes back as one flat numpy array, parsed by simdjson straight from the text without
    a Python object per value (the cost of a JSON request is almost all in those values).

    simdjson parses without the GIL. It is strict JSON (no NaN/Infinity, no out-of-range numbers,
    valid UTF-8) with a nesting limit of 1024: anything else is a 400."""
    import simdjson

    # a parser keeps its buffers for the next document: reuse one per thread for ordinary bodies,
    # but let a large body's buffers go with it
    keep = len(head) <= PARSER_KEEP_MAX
    parser = getattr(_parsers, "parser", None) if keep else None
    if parser is None:
        parser = simdjson.Parser()
    error = None
    try:
        doc = parser.parse(head)
    except RuntimeError as exc:
        if "re-use a parser" not in str(exc):  # too deep
            raise HTTPError(400, f"malformed JSON: {str(exc).split('  ')[0]}", "malformed") from None
        # something still holds a proxy into this thread's parser's last document: never fail a
        # request for that, parse with a new parser
        parser = simdjson.Parser()
        try:
            doc = parser.parse(head)
        except (ValueError, RuntimeError) as again:
            raise HTTPError(400, f"malformed JSON: {str(again).split('  ')[0]}", "malformed") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise HTTPError(400, f"malformed JSON: {str(exc).split('  ')[0]}", "malformed") from None
    if keep:
        _parsers.parser = parser
    try:
        return _from_doc(doc)
    except HTTPError as exc:
        error = (exc.status, exc.message, exc.reason)
    finally:
        del doc  # no proxy into the parser may outlive this call
    # raised here, outside the except clause: no chained traceback keeps _from_doc's proxies alive
    raise HTTPError(*error)


_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def decode_header(head: bytes) -> dict[str, Any]:
    """A binary request's JSON header. Its tensors' values are in the binary part, so it is small
    and orjson reads it (~1 us for a typical header, ~20 us through simdjson's proxies); when an
    input carries JSON "data" after all, or orjson refuses the text, decode_json decides, with its
    rules and its messages. So does a header with a run of 19 digits or more: orjson reads an
    integer beyond 64 bits as a float, where simdjson refuses it."""
    import orjson

    if len(head) <= JSON_INLINE_MAX and not _LONG_DIGITS.search(head):
        try:
            request = orjson.loads(head)
        except orjson.JSONDecodeError:
            request = None
        if (isinstance(request, dict) and isinstance(request.get("inputs"), list)
                and not any(isinstance(item, dict) and "data" in item for item in request["inputs"])):
            return request
    return decode_json(head)


def _from_doc(doc: Any) -> dict[str, Any]:
    import numpy as np
    import simdjson

    if not isinstance(doc, simdjson.Object) or not isinstance(doc.get("inputs"), simdjson.Array):
        raise HTTPError(400, "the request must be a JSON object with an \"inputs\" list", "malformed")
    # by key, not .items(): that would turn the "data" lists into Python objects
    request = {key: _plain(doc[key]) for key in doc.keys() if key != "inputs"}
    inputs = []
    for item in doc["inputs"]:
        if not isinstance(item, simdjson.Object):
            inputs.append(_plain(item))
            continue
        entry = {key: _plain(item[key]) for key in item.keys() if key != "data"}
        data = item.get("data")
        kind = _NUMBER_KIND.get(entry.get("datatype")) if isinstance(data, simdjson.Array) else None
        if kind is not None:
            try:
                data = np.frombuffer(data.as_buffer(of_type=kind), dtype=_BUFFER_DTYPE[kind])
            except (TypeError, ValueError):  # not all numbers of that kind: to_array says what is wrong
                data = _plain(data)
        elif "data" in item:
            data = _plain(data)
        if "data" in item:
            entry["data"] = data
        inputs.append(entry)
    request["inputs"] = inputs
    return request


def _plain(value: Any) -> Any:
    import simdjson

    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


# where each input of a binary-only request lies in its body: (start, size, dtype, shape) in the
# model's input order; with the request and the selected outputs (see App._decode)
Places = list[tuple[int, int, Any, tuple[int, ...]]]
Layout = tuple[dict, Places, list]


def parse_request(model: ServedModel, body: bytes | bytearray,
                  header_len: int | None) -> tuple[dict, list, list, Places | None]:
    """Decode and check an infer request: (the request, the input arrays in the model's order,
    the outputs to return with whether each goes binary, and where each input lies in the body
    when all of them are binary, else None). Raises HTTPError / InputError (400)."""
    if header_len is None:
        request = decode_json(body)
    else:
        request = decode_header(bytes(body[:header_len]))
    if "id" in request and not isinstance(request["id"], str):
        raise InputError("\"id\" must be a string")
    offset = header_len if header_len is not None else len(body)
    arrays: list[Any] = [None] * len(model.inputs)
    places: list[Any] = [None] * len(model.inputs)
    for item in request["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError("each input needs a \"name\", \"shape\", \"datatype\" and \"data\"")
        port = model.input(item["name"])
        if arrays[port.index] is not None:
            raise InputError(f"input {port.name!r} given twice")
        params = item.get("parameters") or {}
        raw = None
        if isinstance(params, dict) and "binary_data_size" in params:
            size = params["binary_data_size"]
            if header_len is None:
                raise InputError("binary_data_size without an Inference-Header-Content-Length header")
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InputError(f"input {port.name!r}: binary_data_size {size} runs past the body")
            raw = memoryview(body)[offset:offset + size]
            offset += size
        arrays[port.index] = to_array(port, item.get("datatype"), item.get("shape"), item.get("data"), raw)
        if raw is not None:
            places[port.index] = (offset - len(raw), len(raw), port.dtype, arrays[port.index].shape)
    missing = [p.name for p in model.inputs if arrays[p.index] is None]
    if missing:
        raise InputError(f"missing input(s): {', '.join(missing)}")
    binary_only = all(place is not None for place in places)  # then the header alone decides the rest
    return request, arrays, _outputs(model, request), places if binary_only else None


def _outputs(model: ServedModel, request: dict) -> list:
    """The outputs an infer request asks for, each with whether it goes binary."""
    params = request.get("parameters") or {}
    binary_default = bool(isinstance(params, dict) and params.get("binary_data_output"))
    wanted = request.get("outputs")
    if wanted is None:
        return [(p, binary_default) for p in model.outputs]
    if not isinstance(wanted, list):
        raise InputError("\"outputs\" must be a list")
    selected = []
    for item in wanted:
        if not isinstance(item, dict) or item.get("name") not in model.outputs_by_name:
            raise InputError(f"unknown output {item.get('name') if isinstance(item, dict) else item!r} "
                             f"(outputs: {', '.join(p.name for p in model.outputs)})")
        op = item.get("parameters") or {}
        if isinstance(op, dict) and op.get("classification"):
            raise InputError("the classification extension is not supported")
        b = op.get("binary_data", binary_default) if isinstance(op, dict) else binary_default
        selected.append((model.outputs_by_name[item["name"]], bool(b)))
    return selected


def dumps(data: Any) -> bytes:
    import orjson

    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY, default=_tolist)


def _tolist(value: Any) -> Any:
    """Arrays orjson does not write itself (e.g. BYTES outputs)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _run_to_end(coroutine: Any) -> Any:
    """The result of a coroutine that never waits, run without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a direct-lane request had to wait")


async def _respond(send: Any, status: int, body: bytes | list[bytes], headers: list | None = None,
                   close: bool = False) -> None:
    parts = body if isinstance(body, list) else [body]
    total = sum(len(p) for p in parts)
    hdrs = [(b"content-length", str(total).encode()), *(headers or [])]
    if close:
        hdrs.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    for i, part in enumerate(parts):
        await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})


async def _json(send: Any, status: int, data: Any, close: bool = False) -> None:
    await _respond(send, status, dumps(data), [JSON_CT], close=close)


# -- process setup ------------------------------------------------------------------------------
def bind_socket(host: str, port: int) -> socket.socket:
    """Bind early (before compiling) so a taken port is one clear error at start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise HosttuneError(f"port {port} is already in use", where=f"{host}:{port}") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
            raise HosttuneError(f"cannot bind: {exc.strerror or exc}", where=f"--bind {host}") from None
        if exc.errno == errno.EACCES:
            raise HosttuneError(f"no permission to bind port {port}", where=f"{host}:{port}") from None
        raise HosttuneError(f"cannot bind: {exc.strerror or exc}", where=f"{host}:{port}") from None
    sock.set_inheritable(True)
    return sock


def _name_thread(name: str) -> None:
    """Give the calling thread a kernel name (top -H, /proc/PID/task/TID/comm)."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


@dataclass
class Limits:
    """What one client may hold: seconds from a request's first byte (or the connection) to the end
    of its headers, seconds from there to the end of its body, and open connections in all."""
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 512


class OneSend:
    """A transport whose writes made in one step of the event loop leave in one send: uvicorn
    writes a response's status line and headers, then each body part, separately, and each
    separate send on a TCP_NODELAY socket is a segment of its own and a wakeup of the client
    (a binary answer was three). Everything else is the transport's own; close() sends what is
    held first."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def flush(self) -> None:
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.writelines(held)  # uvloop: one writev, no copy

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class IdlePoll:
    """After each answer, the event loop polls the network without sleeping for a while (a
    callback that puts itself back on the ready queue makes the loop's epoll_wait return at once).
    A client's next request is then read as soon as it arrives, without the wake-up of a sleeping
    CPU: on the development VM 40-55 us of each back-to-back request of the sample model while its
    host was quiet (mostly inference run on a CPU that had just been idle), ~15 us when it was not. The price: one CPU kept busy while requests keep
    coming, so this is for an instance with CPUs of its own; an idle instance sleeps as before.
    It does not poll while `busy_elsewhere()`: another thread working on a request (a pool's
    inference, a JSON decode) needs the CPU and the GIL (a pool of two on one CPU, JSON at one
    connection: p50 2.73 ms polling throughout, 2.38 ms not polling)."""

    def __init__(self, seconds: float, busy_elsewhere: Any):
        self.seconds = seconds
        self.busy_elsewhere = busy_elsewhere
        self.until = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None

    def extend(self, loop: asyncio.AbstractEventLoop) -> None:
        # time.monotonic, not loop.time(): uvloop's clock moves in whole milliseconds
        self.until = time.monotonic() + self.seconds
        if self.loop is None:
            self.loop = loop
            loop.call_soon(self._poll)

    def _poll(self) -> None:
        loop = self.loop
        if (loop is not None and time.monotonic() < self.until and not loop.is_closed()
                and not self.busy_elsewhere()):
            loop.call_soon(self._poll)
        else:
            self.loop = None


def protocol_class(limits: Limits, app: App | None = None, idle_poll_us: int = 0) -> type:
    """uvicorn's httptools protocol with the limits it lacks: a client that trickles its headers or
    its body is answered 408 and disconnected; a connection beyond the cap is answered 503 and
    closed at once (the keep-alive timeout already covers idle connections between requests).

    With `app`, the direct lane: an infer request that App.lane accepts (a model with a pool of
    one, a declared length within the limits, little JSON) is read into one buffer and answered
    from the parser's callbacks, through the same App.infer as the ASGI path, without uvicorn's
    request cycle, task and messages: on the development VM 30-40 us less per request (the sample
    model's binary request, the trivial model's), 12 % more trivial-model requests per second.
    Anything else, errors included, takes the ASGI path.

    With `idle_poll_us`, the loop polls instead of sleeping for that long after each answer
    (IdlePoll)."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    def _head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The status line and headers of an answer the protocol writes itself."""
        return b"".join([STATUS_LINE[status], *(b"%s: %s\r\n" % pair for pair in headers), b"\r\n"])

    idle_poll = IdlePoll(idle_poll_us / 1e6, app.busy_elsewhere if app else lambda: False) if idle_poll_us > 0 else None

    class Protocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        # the lane's request being read: [model, header_len, body so far]
        _lane: list | None = None
        _close_after_lane = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.transport = OneSend(transport, self.loop)
            if len(self.connections) > limits.max_connections:
                self._refuse(503, f"more than {limits.max_connections} connections")
                return
            self._arm(limits.header_timeout, "headers")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(limits.header_timeout, "headers")

        def on_headers_complete(self) -> None:
            self._arm(limits.body_timeout, "body")
            if app is None or not self._take_lane():
                super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            lane = self._lane
            if lane is None:
                super().on_body(body)
                return
            lane[2] += body  # grown as it arrives: a declared length alone reserves nothing

        def on_message_complete(self) -> None:
            self._disarm()
            if self._lane is None:
                super().on_message_complete()
                return
            model, header_len, body = self._lane
            self._lane = None
            try:
                answer = _run_to_end(app.infer(model, bytes(body) if header_len is None else body, header_len))
            except Exception as exc:  # a bug, not the request: as uvicorn answers an application's
                self.logger.error("Exception in the direct lane", exc_info=exc)
                answer = (500, b"Internal Server Error", [(b"content-type", b"text/plain; charset=utf-8")], True)
            self._answer(*answer)

        def _take_lane(self) -> bool:
            if (self.parser.get_method() != b"POST" or self.expect_100_continue or self.parser.should_upgrade()
                    or (self.cycle is not None and not self.cycle.response_complete)  # answers go in order
                    or self.flow.write_paused  # the ASGI path waits for a slow reader; the lane cannot
                    or any(name == b"transfer-encoding" for name, _ in self.headers)):
                return False
            try:
                path = httptools.parse_url(self.url).path.decode("ascii")
            except (httptools.HttpParserError, UnicodeDecodeError):
                return False  # the ASGI path deals with it as before
            taken = app.lane(unquote(path) if "%" in path else path, self.headers)  # as uvicorn's scope
            if taken is None:
                return False
            model, header_len = taken
            self._lane = [model, header_len, bytearray()]
            return True

        def _answer(self, status: int, body: bytes | list[bytes], headers: list, close: bool) -> None:
            parts = body if isinstance(body, list) else [body]
            close = close or self._close_after_lane or not self.parser.should_keep_alive()
            fields = [*self.server_state.default_headers, (b"content-length", b"%d" % sum(len(p) for p in parts)),
                      *headers]
            if close:
                fields.append((b"connection", b"close"))
            self.transport.writelines([_head(status, fields), *parts])
            self.on_response_complete()  # sends it; keep-alive and pipelining as after any answer
            if close:
                self.transport.close()

        def shutdown(self) -> None:
            if self._lane is not None:  # graceful: the request being read is answered, then closed
                self._close_after_lane = True
                return
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._lane is not None:  # gone before the end of its body: counted as the ASGI path does
                self._lane = None
                app.metrics.bad.labels("disconnect").inc()
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            # The whole answer is written: it leaves now, not after the request's bookkeeping
            # (metrics, the ASGI task's return) that runs in the rest of this loop step.
            self.transport.flush()
            super().on_response_complete()
            if idle_poll is not None:
                idle_poll.extend(self.loop)

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._timed_out, what)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _timed_out(self, what: str) -> None:
            self._deadline = None
            if self.cycle is not None and not self.cycle.response_complete:
                if what == "headers":  # a pipelined request behind one still being answered: later
                    self._arm(limits.header_timeout, what)
                    return
                if self.cycle.response_started:
                    self.transport.close()  # too late for a status line
                    return
            self._refuse(408, f"request {what} not received in time")

        def _refuse(self, status: int, message: str) -> None:
            if self.transport.is_closing():
                return
            body = dumps({"error": message})
            self.transport.write(_head(status, [JSON_CT, (b"content-length", b"%d" % len(body)),
                                                (b"connection", b"close")]) + body)
            self.transport.close()

    return Protocol


def serve_forever(app: App, sock: socket.socket, host: str, quiet: bool = False, limits: Limits | None = None,
                  idle_poll_us: int = 0) -> None:
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(app, loop=loop, http=protocol_class(limits or Limits(), app, idle_poll_us), lifespan="off",
                            access_log=False, log_level="warning", timeout_keep_alive=75, server_header=False,
                            backlog=1024, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    sock.listen(1024)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not quiet:
        models = ", ".join(f"{m.name}:{m.version} (streams {m.streams}, nireq {m.nireq})" for m in app.models.values())
        polling = f", idle poll {idle_poll_us} us" if idle_poll_us else ""
        print(f"hosttune serve: listening on http://{shown}:{port} pid {os.getpid()} - {models}{polling}",
              file=sys.stderr, flush=True)
    notify("READY=1")  # Type=notify units: the models are compiled; a no-op outside systemd
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again against the handler
    # it found at start: with the default one the process would die with 143. A no-op handler there
    # makes SIGTERM a clean exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    app.close()
