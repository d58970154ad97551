"""The KServe v2 application: routing, infer, metrics, refusals (a plain ASGI callable, `App`).

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{name}[/versions/{v}]            metadata
    GET  /v2/models/{name}[/versions/{v}]/ready     200 with an empty body, as OVMS
    POST /v2/models/{name}[/versions/{v}]/infer      JSON tensors and the binary-data extension
    GET  /metrics                                    Prometheus (OVMS metric names), when metrics are on
    GET  /v1/config, POST /v1/config/reload          OVMS's model status; re-read config.json now
                                                     (hosttune/serve/reload.py)

Health and model-ready answers are OVMS's (src/http_server.cpp, http_rest_api_handler.cpp): the
status code alone answers, with an empty body and OVMS's `content-type: application/json`.

Bad requests get a 4xx with `{"error": "..."}` and the server keeps serving. Every infer request
is answered by `infer`; one that `answers_now` accepts by `infer_now`, which runs on the calling
thread without waiting: the direct lane (hosttune/serve/wire.py) calls it from the HTTP parser's
callbacks.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote

from hosttune import __version__, numbers
from hosttune.serve.decode import JSON_CT, JSON_INLINE_MAX, Decoder, HTTPError, dumps
from hosttune.serve.engine import InputError, ServedModel
from hosttune.serve.metrics import Metrics
from hosttune.serve.placement import Threads
from hosttune.serve.wire import Answer

DEFAULT_MAX_BODY = 64 * 2**20
# JSON is held to less: copying a JSON document's numbers out of the parser holds the interpreter
# lock (~15-60 ns per number), so the size of a JSON body bounds how long other requests wait
DEFAULT_MAX_JSON = 16 * 2**20
HEADER_LEN = b"inference-header-content-length"
MODELS = "/v2/models/"


class App:
    """The ASGI application."""

    def __init__(self, models: list[ServedModel], max_body: int = DEFAULT_MAX_BODY,
                 max_json: int = DEFAULT_MAX_JSON, metrics_on: bool = True,
                 metric_families: frozenset[str] | None = None, placed: Threads | None = None):
        """`metrics_on` False: /metrics is an unknown endpoint, as OVMS without metrics;
        `metric_families` the families it exposes (metrics.enabled_families; None: all)."""
        self.max_body = max_body
        self.max_json = max_json
        # large JSON bodies: as many decoded at once as requests can run in OpenVINO
        self.decoder = Decoder(threads=max(m.nireq for m in models), placed=placed)
        self.placed = placed or Threads()
        self.metrics = Metrics(enabled=metric_families)
        self.metrics_on = metrics_on
        # the metric children of each (name, version) ever served: a request on a model replaced
        # by a reload still finds its own
        self.bound: dict[tuple[str, int], dict] = {}
        self.interfaces: set[str] = set()  # other than REST (gRPC): their series are made with each model
        self.models: dict[str, dict[int, ServedModel]] = {}  # name -> version -> model
        self.set_models(models)
        self.reloader: Any = None  # hosttune/serve/reload.py's Reloader when serving a config.json
        self.ready = True

    def set_models(self, models: list[ServedModel]) -> None:
        """Serve `models` from now on (one assignment: a request sees the old set or the new one).
        A model left out is freed once the requests holding it have been answered."""
        served: dict[str, dict[int, ServedModel]] = {}
        for m in models:
            served.setdefault(m.name, {})[m.version] = m
            self.bound[(m.name, m.version)] = self.metrics.model(m.name, m.version, m.streams, m.nireq,
                                                                 lambda m=m: m.active)
            for interface in self.interfaces:  # every series exists from the first scrape, as in OVMS
                self.metrics.requests(m.name, m.version, interface)
        for name, versions in self.models.items():
            for version in versions:
                if version not in served.get(name, {}):  # unloaded: its gauge lets go of it
                    self.metrics.active.labels(name=name, version=str(version)).set_function(lambda: 0)
        self.models = served

    def served(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    def close(self) -> None:
        self.decoder.close()

    def busy_elsewhere(self) -> bool:
        """Whether another thread works on a request (the JSON decoder, an infer request of a
        pool): an event loop polling beside it would take CPU time and the GIL from it."""
        return self.decoder.working > 0 or any(m.active and m.nireq > 1 for m in self.served())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            answer = await self._route(scope, receive)
        except HTTPError as exc:
            answer = self.refused(exc)
        status, body, headers, close = answer
        parts = body if isinstance(body, list) else [body]
        fields = [(b"content-length", str(sum(len(p) for p in parts)).encode()), *headers]
        if close:
            fields.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": fields})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})

    async def _route(self, scope: dict, receive: Any) -> Answer:
        path = scope["path"]
        method = scope["method"]
        if path.startswith(MODELS):
            return await self._model_route(scope, receive, method)
        if path in ("/v2/health/live", "/v2/health/ready"):
            self._only(method, "GET", "HEAD")
            ok = path.endswith("live") or self.ready
            return 200 if ok else 503, b"", [JSON_CT], False
        if path in ("/v2", "/v2/"):
            self._only(method, "GET")
            return _json(200, {"name": "hosttune", "version": __version__, "extensions": ["binary_tensor_data"]})
        if path == "/metrics" and self.metrics_on:
            self._only(method, "GET")
            body, ctype = self.metrics.render()
            return 200, body, [(b"content-type", ctype.encode())], False
        if path == "/v1/config":
            self._only(method, "GET")
            return _json(200, self.reloader.status() if self.reloader else config_status(self.served()))
        if path == "/v1/config/reload":
            self._only(method, "POST")
            if self.reloader is None:  # not started with a config file: nothing to re-read
                return _json(200, config_status(self.served()))
            code, doc = await self.reloader.reload(forced=True)
            return _json(code, doc)
        raise HTTPError(404, f"no such endpoint: {path}", "not_found")

    def refused(self, exc: HTTPError) -> Answer:
        """The answer to a request refused before it reached a model (counted as such)."""
        self.metrics.bad.labels(exc.reason).inc()
        return exc.status, dumps({"error": exc.message}), [JSON_CT], exc.status == 413

    def client_left(self) -> None:
        """A client gone before the end of its request's body: counted as a refusal."""
        self.refused(HTTPError(400, "client disconnected", "disconnect"))

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HTTPError(405, f"method {method} not allowed here (use {', '.join(allowed)})", "method")

    def route(self, path: str) -> tuple[ServedModel, str]:
        """The model and the action ("", "ready" or "infer") of a path below /v2/models/, as sent
        (undecoded): split at its slashes, then each segment percent-decoded once, so that
        `trivial%2Finfer` names a model "trivial/infer" and `%252F` stays "%2F"."""
        parts = [unquote(part) if "%" in part else part for part in path[len(MODELS):].split("/")]
        name, version = parts[0], None
        tail = parts[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version, tail = tail[1], tail[2:]
        if len(tail) > 1 or (tail and tail[0] not in ("", "ready", "infer")):
            raise HTTPError(404, f"no such endpoint: {path}", "not_found")
        return self.find_model(name, version), tail[0] if tail else ""

    def find_model(self, name: str, version: str | None) -> ServedModel:
        """The model served under `name` and `version` (None or "": the served one); a 404
        HTTPError (reason "unknown_model") names what is served instead. REST and gRPC both ask."""
        versions = self.models.get(name)
        if versions is None:
            raise HTTPError(404, f"model {name!r} is not served here (models: {', '.join(self.models)})",
                            "unknown_model")
        if version in (None, ""):
            return versions[max(versions)]  # OVMS: the highest version served
        number = numbers.uint_or_none(version, 2**63 - 1)  # ASCII digits: OVMS's int64 versions
        model = versions.get(number) if number is not None else None
        if model is None:
            served = ", ".join(map(str, sorted(versions)))
            raise HTTPError(404, f"model {name!r} version {version} is not served (versions: {served})",
                            "unknown_model")
        return model

    async def _model_route(self, scope: dict, receive: Any, method: str) -> Answer:
        raw = scope.get("raw_path")  # uvicorn's "path" is decoded already: route decodes, once
        model, action = self.route(raw.decode("latin-1") if raw is not None else scope["path"])
        bound = self.bound[(model.name, model.version)]
        if action == "infer":
            self._only(method, "POST")
            body, header_len = await self._read_body(scope, receive)
            return await self.infer(model, body, header_len)
        if action == "ready":
            self._only(method, "GET", "HEAD")
            bound["success"]["ModelReady"].inc()
            return 200, b"", [JSON_CT], False  # as OVMS: the status code alone answers
        self._only(method, "GET")
        bound["success"]["ModelMetadata"].inc()
        return _json(200, model.metadata())

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

    # -- infer ------------------------------------------------------------------------------------
    @staticmethod
    def answers_now(model: ServedModel, json_len: int) -> bool:
        """Whether an infer request for `model` with `json_len` bytes of JSON (the body, or a
        binary request's header) is answered by infer_now, on the calling thread without waiting:
        its model has a pool of one (the inference runs inline, ServedModel.infer_now) and its
        JSON is small enough to decode inline. The one rule of the direct lane (`lane`) and of
        `infer`."""
        return model.nireq == 1 and json_len <= JSON_INLINE_MAX

    def lane(self, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[ServedModel, int | None] | None:
        """Whether a POST to `path` (undecoded) with these headers takes the direct lane: an infer
        request that answers_now accepts, its length declared and within the limits. Returns
        (model, header_len); None sends the request down the ASGI path, which also answers every
        error."""
        if not path.startswith(MODELS):
            return None
        try:
            model, action = self.route(path)
            _, _, length, header_len = self.body_limit(headers)
        except HTTPError:
            return None
        if action != "infer" or length is None:
            return None
        if not self.answers_now(model, header_len if header_len is not None else length):
            return None
        return model, header_len

    async def infer(self, model: ServedModel, body: bytes | bytearray, header_len: int | None) -> Answer:
        """The answer to an infer request whose body has been read (the ASGI path)."""
        if self.answers_now(model, header_len if header_len is not None else len(body)):
            return self.infer_now(model, body, header_len)
        refused = self._outside_body(body, header_len)
        if refused is not None:
            return refused
        bound = self.bound[(model.name, model.version)]
        t0 = time.perf_counter()
        bound["current"].inc()
        try:
            try:
                json_len = header_len if header_len is not None else len(body)
                if json_len <= JSON_INLINE_MAX:
                    request, arrays, selected = self.decoder.now(model, body, header_len)
                else:  # a large JSON body is decoded on a thread: health checks and other requests go on
                    request, arrays, selected = await self.decoder.on_thread(model, body, header_len)
                timings: dict[str, float] = {}
                results = await model.infer(arrays, timings)
                response, binary = self._response(model, request, selected, results, timings)
            except Exception as exc:
                return self._failed(model, exc)
            return self._succeeded(model, response, binary, t0)
        finally:
            bound["current"].dec()

    def infer_now(self, model: ServedModel, body: bytes | bytearray, header_len: int | None) -> Answer:
        """The answer to an infer request that answers_now accepts, computed on this thread: no
        step of it can wait (a plain function). Any other request is a caller's bug, refused here
        at once."""
        if not self.answers_now(model, header_len if header_len is not None else len(body)):
            raise RuntimeError(f"infer_now: a request for {model.name!r} (pool of {model.nireq}, "
                               f"{len(body)} bytes) cannot be answered without waiting; use infer")
        refused = self._outside_body(body, header_len)
        if refused is not None:
            return refused
        bound = self.bound[(model.name, model.version)]
        t0 = time.perf_counter()
        bound["current"].inc()
        try:
            try:
                request, arrays, selected = self.decoder.now(model, body, header_len)
                timings: dict[str, float] = {}
                results = model.infer_now(arrays, timings)
                response, binary = self._response(model, request, selected, results, timings)
            except Exception as exc:
                return self._failed(model, exc)
            return self._succeeded(model, response, binary, t0)
        finally:
            bound["current"].dec()

    def _outside_body(self, body: bytes | bytearray, header_len: int | None) -> Answer | None:
        if header_len is not None and header_len > len(body):
            return self.refused(HTTPError(400, f"Inference-Header-Content-Length {header_len} is outside the "
                                               f"body ({len(body)} bytes)", "malformed"))
        return None

    def _failed(self, model: ServedModel, exc: Exception) -> Answer:
        self.bound[(model.name, model.version)]["fail"]["ModelInfer"].inc()
        if isinstance(exc, (InputError, HTTPError)):
            status = exc.status if isinstance(exc, HTTPError) else 400
            return status, dumps({"error": str(exc)}), [JSON_CT], False
        # an OpenVINO failure on valid input: the server keeps serving
        return 500, dumps({"error": f"inference failed: {str(exc).strip()[:300]}"}), [JSON_CT], False

    def _succeeded(self, model: ServedModel, response: dict, binary: list[bytes], t0: float) -> Answer:
        header = dumps(response)
        if binary:
            answer = (200, [header, *binary], [(b"content-type", b"application/octet-stream"),
                                               (HEADER_LEN, str(len(header)).encode())], False)
        else:
            answer = (200, header, [JSON_CT], False)
        bound = self.bound[(model.name, model.version)]
        bound["success"]["ModelInfer"].inc()
        bound["request_time"].observe((time.perf_counter() - t0) * 1e6)
        return answer

    def _response(self, model: ServedModel, request: dict, selected: list, results: list,
                  timings: dict[str, float]) -> tuple[dict, list[bytes]]:
        bound = self.bound[(model.name, model.version)]
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


def _json(status: int, data: Any) -> Answer:
    return status, dumps(data), [JSON_CT], False


def config_status(models: list[ServedModel], ended: tuple[tuple[str, int], ...] = ()) -> dict[str, Any]:
    """OVMS's GET /v1/config document (src/config_status_utils.cpp): per model name, each version's
    state; a version unloaded by a reload stays listed as END, as in OVMS."""
    out: dict[str, Any] = {}
    rows = sorted([(m.name, m.version, "AVAILABLE") for m in models] + [(n, v, "END") for n, v in ended])
    for name, version, state in rows:
        out.setdefault(name, {"model_version_status": []})["model_version_status"].append(
            {"version": str(version), "state": state, "status": {"error_code": "OK", "error_message": "OK"}})
    return out
