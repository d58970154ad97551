"""The real server in a subprocess, spoken to over raw HTTP and with tritonclient (a standard
KServe v2 client)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from hosttune.instance_settings import METRICS_LIST  # noqa: E402
from hosttune.model import repo as model_repo  # noqa: E402
from tests.serverproc import HOSTTUNE, Server, free_port, response as request  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    model_repo.sample(str(path), variant="tiny", int8=False)
    model_repo.sample(str(path), variant="trivial", int8=False)
    _reshape_model(path / "reshape3" / "1" / "model.xml")
    return path


def _reshape_model(xml):
    """A model that OpenVINO cannot run on some valid inputs: a dynamic [-1] input reshaped to
    [3, -1] fails inside the plugin unless its length divides by 3."""
    import openvino.opset13 as ops

    x = ops.parameter([-1], np.float32, name="x")
    x.output(0).set_names({"x"})
    y = ops.reshape(x, ops.constant(np.array([3, -1], np.int64)), special_zero=False)
    y.output(0).set_names({"y"})
    ov.save_model(ov.Model([y], [x], "reshape3"), str(xml))


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    # run from an unrelated directory: no assumption about the source tree (systemd unit, container)
    cwd = tmp_path_factory.mktemp("cwd")
    srv = Server("--repo", str(models), "--max-body", str(2**20), "--config", '{"NUM_STREAMS": 2}',
                 "--metrics_enable", "--metrics_list", ",".join(METRICS_LIST), cwd=str(cwd))
    yield srv
    assert srv.stop() == 0 or srv.proc.returncode == -15



def expected_tiny(models, x):
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(models / "tiny" / "1" / "model.xml")), "CPU")
    return compiled.create_infer_request().infer({0: x})[0]


def test_health_and_metadata(server):
    assert request(server, "GET", "/v2/health/live")[0] == 200
    assert request(server, "GET", "/v2/health/ready")[0] == 200
    status, _, body = request(server, "GET", "/v2/models/tiny")
    assert status == 200
    meta = json.loads(body)
    assert meta["name"] == "tiny" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10]}]
    assert request(server, "GET", "/v2/models/tiny/versions/1")[0] == 200
    status, _, body = request(server, "GET", "/v2/models/tiny/ready")
    assert status == 200 and body == b""  # as OVMS: the status code answers
    assert request(server, "GET", "/v2/models/nope/ready")[0] == 404
    assert json.loads(request(server, "GET", "/v2")[2])["extensions"] == ["binary_tensor_data"]


def test_json_infer_matches_openvino(server, models):
    status, headers, body = request(server, "POST", "/v2/models/trivial/infer", json.dumps(
        {"id": "r1", "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                 "data": list(range(16))}]}))
    assert status == 200, body
    out = json.loads(body)
    assert out["id"] == "r1" and out["model_name"] == "trivial"
    assert out["outputs"][0]["data"] == [float(v + 1) for v in range(16)]
    x = np.random.default_rng(3).random((1, 3, 32, 32)).astype(np.float32)
    status, _, body = request(server, "POST", "/v2/models/tiny/versions/1/infer", json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.tolist()}]}))
    got = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(1, 10)
    np.testing.assert_allclose(got, expected_tiny(models, x), rtol=1e-5, atol=1e-6)


def test_binary_extension_raw_http(server, models):
    x = np.random.default_rng(4).random((1, 3, 32, 32)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    status, headers, body = request(server, "POST", "/v2/models/tiny/infer", header + x.tobytes(),
                                    {"Inference-Header-Content-Length": str(len(header)),
                                     "Content-Type": "application/octet-stream"})
    assert status == 200, body
    n = int(headers["inference-header-content-length"])
    meta = json.loads(body[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 40
    got = np.frombuffer(body[n:], np.float32).reshape(1, 10)
    np.testing.assert_allclose(got, expected_tiny(models, x), rtol=1e-5, atol=1e-6)


def test_a_response_leaves_in_one_send(server, models):
    """Status line, headers, JSON header and binary output go out in one send (one segment, one
    wakeup of the client): the first recv() holds the whole answer, on a kept-alive connection too."""
    x = np.random.default_rng(5).random((1, 3, 32, 32)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    body = header + x.tobytes()
    head = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for _ in range(3):
            sock.sendall(head + body)
            first = sock.recv(1 << 20)
            status, _, rest = first.partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 200"), first[:200]
            length = int(re.search(rb"(?i)content-length: (\d+)", status).group(1))
            assert len(rest) == length, f"first recv: {len(first)} bytes, the body is {length} bytes"
            n = int(re.search(rb"(?i)inference-header-content-length: (\d+)", status).group(1))
            got = np.frombuffer(rest[n:], np.float32).reshape(1, 10)
            np.testing.assert_allclose(got, expected_tiny(models, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_response_leaves_before_the_rest_of_the_request(loop):
    """The answer is sent the moment its last part is written, not when the application's loop
    step ends: the metrics and the ASGI task's return come after it. The application below blocks
    its loop after the last send until the client says it has the answer; if the answer were held
    back to the end of the step, the client would wait out the application's 5 s instead."""
    import threading

    import uvicorn

    from hosttune.serve.wire import Limits, protocol_class

    client_has_it = threading.Event()
    seen: list[bool] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"he", "more_body": True})
        await send({"type": "http.response.body", "body": b"llo"})
        seen.append(client_has_it.wait(5))  # blocks the loop, as the request's bookkeeping would

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, loop=loop, http=protocol_class(Limits()), lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            for i in range(2):  # a kept-alive connection too
                started = time.monotonic()
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = b""
                while not reply.endswith(b"hello"):
                    chunk = conn.recv(4096)
                    assert chunk, reply
                    reply += chunk
                waited = time.monotonic() - started
                client_has_it.set()
                assert reply.startswith(b"HTTP/1.1 200"), reply
                assert waited < 4, f"the answer came after {waited:.1f} s: held back to the end of the loop step"
                deadline = time.monotonic() + 10
                while len(seen) < i + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                client_has_it.clear()
        assert seen == [True, True]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _uvicorn_in_thread(app, asgi, protocol):
    """uvicorn with hosttune's protocol in a thread; returns (server, thread, port)."""
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(asgi, loop="uvloop", http=protocol, lifespan="off", log_level="warning",
                                           timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, thread, sock.getsockname()[1]


def _read_answers(conn: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """`count` HTTP answers with a Content-Length: (head without the date header, body) each."""
    data, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(
                re.search(rb"(?i)content-length: (\d+)", data).group(1)):
            chunk = conn.recv(1 << 20)
            assert chunk, (answers, data[:300])
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        answers.append((re.sub(rb"(?im)^date: [^\r]*\r\n", b"", head + b"\r\n"), rest[:length]))
        data = rest[length:]
    return answers


def _counts(exposition: bytes) -> dict[str, str]:
    """The metrics that count requests (no timings: those differ between any two runs)."""
    values = {}
    for line in exposition.decode().splitlines():
        key, _, value = line.rpartition(" ")
        if line and not line.startswith("#") and "_bucket" not in key and "_sum" not in key:
            values[key] = value
    return values


def test_direct_lane_answers_as_the_asgi_path(models):
    """An infer request for a model with a pool of one is answered from the HTTP parser's callbacks
    (the direct lane), without the ASGI application; every answer, the errors included, and the
    metrics are byte for byte those of the ASGI path, on kept-alive, pipelined and HTTP/1.0
    connections, and a client gone in the middle of a body is counted the same way."""
    from hosttune.model.repo import find
    from hosttune.serve.engine import ServedModel
    from hosttune.serve.app import App
    from hosttune.serve.wire import Limits, protocol_class

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}
    x = np.random.default_rng(9).random((1, 16)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}, "id": "b1"}).encode()

    def post(body: bytes, extra: str = "", version: str = "1.1", path: str = "/v2/models/trivial/infer") -> bytes:
        head = f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        return head.encode() + body

    binary = post(header + x.tobytes(), f"Inference-Header-Content-Length: {len(header)}\r\n")
    exchanges = [  # what one connection sends at once, and how many answers come back
        ([binary, binary], 2),  # pipelined
        ([post(_infer_body([1, 16]).encode())], 1),
        ([post(_infer_body([1, 15]).encode())], 1),  # 400 from the model's checks
        ([post(b'{"inputs": [')], 1),  # malformed JSON
        ([post(header + x.tobytes()[:8], f"Inference-Header-Content-Length: {len(header)}\r\n")], 1),
        ([post(b"{}", "Inference-Header-Content-Length: 99\r\n")], 1),  # header outside the body
        ([post(_infer_body([1, 16]).encode(), path="/v2/models/trivial/versions/1/infer")], 1),
        ([post(_infer_body([1, 16]).encode(), path="/v2/models/tri%76ial/infer")], 1),
        ([post(_infer_body([1, 16]).encode(), path="/v2/models/nope/infer")], 1),  # not a lane request
        ([post(_infer_body([1, 16]).encode(), "Connection: close\r\n")], 1),
        ([post(_infer_body([1, 16]).encode(), version="1.0")], 1),
    ]
    results = {}
    for lane in (True, False):
        app = App([ServedModel(core, find(str(models), "trivial", None), config)])
        assert app.models["trivial"][1].nireq == 1
        called: list[str] = []

        async def asgi(scope, receive, send, app=app, called=called):
            if scope["type"] == "http":
                called.append(scope["path"])
            await app(scope, receive, send)

        server, thread, port = _uvicorn_in_thread(app, asgi, protocol_class(Limits(), app if lane else None))
        try:
            seen = []
            for parts, count in exchanges:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                    for _ in range(2):  # the same connection again, when it stays open
                        conn.sendall(b"".join(parts))
                        answers = _read_answers(conn, count)
                        seen.append(answers)
                        if any(b"connection: close" in head.lower() for head, _ in answers):
                            assert conn.recv(10) == b""  # closed after the answer
                            break
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                conn.sendall(binary[:-100])  # and gone before the end of the body
            deadline = time.monotonic() + 10
            while b'reason="disconnect"' not in app.metrics.render()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            metrics = app.metrics.render()[0]
        finally:
            server.should_exit = True
            thread.join(30)
        results[lane] = seen, metrics, called
    lane_seen, lane_metrics, lane_called = results[True]
    asgi_seen, asgi_metrics, asgi_called = results[False]
    assert lane_seen == asgi_seen
    assert _counts(lane_metrics) == _counts(asgi_metrics)
    statuses = [head.split(b" ")[1] for answers in lane_seen for head, _ in answers]
    assert statuses.count(b"200") >= 10 and statuses.count(b"400") == 8 and statuses.count(b"404") == 2, statuses
    head, body = lane_seen[0][0]
    n = int(re.search(rb"inference-header-content-length: (\d+)", head).group(1))
    assert json.loads(body[:n])["id"] == "b1"
    # the trivial model adds 1
    np.testing.assert_allclose(np.frombuffer(body[n:], np.float32), x.ravel() + 1, rtol=1e-6)
    assert lane_called == ["/v2/models/nope/infer"] * 2  # only what the lane does not take
    assert len(asgi_called) == len(statuses) + 1  # and the request whose client left


def test_direct_lane_request_is_answered_in_a_graceful_shutdown(models):
    """A shutdown while the lane reads a request's body: the request is answered (connection:
    close) and the connection closed, as the ASGI path finishes its requests."""
    from hosttune.model.repo import find
    from hosttune.serve.engine import ServedModel
    from hosttune.serve.app import App
    from hosttune.serve.wire import Limits, protocol_class

    app = App([ServedModel(ov.Core(), find(str(models), "trivial", None), {"PERFORMANCE_HINT": "LATENCY"})])
    server, thread, port = _uvicorn_in_thread(app, app, protocol_class(Limits(), app))
    try:
        body = _infer_body([1, 16]).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(f"POST /v2/models/trivial/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + body[:10])
            time.sleep(0.3)
            server.should_exit = True
            time.sleep(0.5)
            conn.sendall(body[10:])
            (head, answer), = _read_answers(conn, 1)
            assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head, head
            assert json.loads(answer)["outputs"][0]["shape"] == [1, 16]
            assert conn.recv(10) == b""
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def _binary_post(x: np.ndarray, request_id: str, cut: int = 0) -> bytes:
    """A binary infer request for the trivial model; `cut` bytes short of its declared data."""
    header = json.dumps({"id": request_id, "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                                       "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    body = header + x.tobytes()[:x.nbytes - cut]
    return (f"POST /v2/models/trivial/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("nireq", [1, 2])  # the direct lane, the ASGI path
def test_a_repeated_binary_header_answers_each_body(models, nireq):
    """A client sends the same JSON header with every binary request; the server reuses what it
    made of the last one, but each answer is that of its own body, a shorter body is still refused,
    and another header is read afresh."""
    rng = np.random.default_rng(12)
    xs = [rng.random((1, 16)).astype(np.float32) for _ in range(3)]
    srv = Server("--repo", str(models), "--model", "trivial", "--nireq", str(nireq), "--config",
                 json.dumps({"NUM_STREAMS": nireq}))
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as conn:
            sent = [(_binary_post(xs[0], "a"), xs[0], "a"), (_binary_post(xs[1], "a"), xs[1], "a"),
                    (_binary_post(xs[2], "a", cut=4), None, "a"), (_binary_post(xs[2], "a"), xs[2], "a"),
                    (_binary_post(xs[0], "b"), xs[0], "b"), (_binary_post(xs[1], "a"), xs[1], "a")]
            for raw, x, request_id in sent:
                conn.sendall(raw)
                (head, body), = _read_answers(conn, 1)
                if x is None:
                    assert head.startswith(b"HTTP/1.1 400") and b"runs past the body" in body, (head, body)
                    continue
                assert head.startswith(b"HTTP/1.1 200"), (head, body)
                n = int(re.search(rb"inference-header-content-length: (\d+)", head).group(1))
                assert json.loads(body[:n])["id"] == request_id
                np.testing.assert_array_equal(np.frombuffer(body[n:], np.float32).reshape(1, 16), x + 1)
    finally:
        assert srv.stop() == 0


def test_only_small_binary_only_headers_are_remembered(models):
    """What a request's header made is kept per model, and only for a header of at most 4 KiB whose
    inputs are all binary: memory stays bounded whatever the clients send."""
    from hosttune.model.repo import find
    from hosttune.serve.engine import ServedModel
    from hosttune.serve.app import App

    model = ServedModel(ov.Core(), find(str(models), "trivial", None), {"PERFORMANCE_HINT": "LATENCY"})
    app = App([model])
    x = np.arange(16, dtype=np.float32).reshape(1, 16)

    def infer(header: dict, data: bytes = x.tobytes()) -> int:
        head = json.dumps(header).encode()
        return app.infer_now(model, bytearray(head + data), len(head))[0]

    binary = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}]}
    assert infer({**binary, "id": "x" * 5000}) == 200 and app.decoder.layouts == {}
    assert infer({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": x.ravel().tolist()}]},
                 b"") == 200 and app.decoder.layouts == {}
    assert infer(binary) == 200 and len(app.decoder.layouts) == 1
    for i in range(50):
        assert infer({**binary, "id": str(i)}) == 200
    assert len(app.decoder.layouts) == 1 and b'"id":"49"' in app.decoder.layouts["trivial"][0].replace(b" ", b"")


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_idle_poll_polls_after_an_answer_then_sleeps(models):
    """--idle-poll-us: after an answer the server polls for the next request (its CPU busy) for
    that long, then sleeps again (its CPU idle); it still stops cleanly."""
    srv = Server("--repo", str(models), "--model", "trivial", "--idle-poll-us", "600000", "--config",
                 '{"PERFORMANCE_HINT": "LATENCY"}')
    try:
        assert "idle poll 600000 us" in srv.banner
        time.sleep(1.0)
        before = _cpu_seconds(srv.proc.pid)
        time.sleep(0.5)
        assert _cpu_seconds(srv.proc.pid) - before < 0.1  # asleep before any request
        assert request(srv, "POST", "/v2/models/trivial/infer", _infer_body([1, 16]))[0] == 200
        before = _cpu_seconds(srv.proc.pid)
        time.sleep(0.4)
        busy = _cpu_seconds(srv.proc.pid) - before
        assert busy > 0.15, busy  # polling
        time.sleep(0.5)
        before = _cpu_seconds(srv.proc.pid)
        time.sleep(0.5)
        assert _cpu_seconds(srv.proc.pid) - before < 0.1  # the window is over
        assert request(srv, "POST", "/v2/models/trivial/infer", _infer_body([1, 16]))[0] == 200
    finally:
        assert srv.stop() == 0  # SIGTERM while polling


def test_idle_poll_yields_to_other_threads_and_ends():
    """The event loop polls (its thread busy) after extend() until the window ends, and stops at
    once while another thread works on a request: it must not take that thread's CPU."""
    import uvloop

    from hosttune.serve.wire import IdlePoll

    busy = [False]

    async def main() -> list[tuple[bool, float]]:
        loop = asyncio.get_running_loop()
        poll = IdlePoll(0.3, lambda: busy[0])
        seen = []

        async def phase(seconds: float) -> None:
            start = time.thread_time()
            await asyncio.sleep(seconds)
            seen.append((poll.loop is not None, (time.thread_time() - start) / seconds))

        poll.extend(loop)
        await phase(0.1)  # polling
        busy[0] = True
        await phase(0.1)  # another thread is busy: stopped
        busy[0] = False
        poll.extend(loop)
        await phase(0.1)  # polling again
        await asyncio.sleep(0.25)
        await phase(0.1)  # the window is over
        return seen

    seen = uvloop.run(main())
    assert [polling for polling, _ in seen] == [True, False, True, False], seen
    assert seen[0][1] > 0.3 and seen[2][1] > 0.3, seen  # the thread kept its CPU busy
    assert seen[1][1] < 0.2 and seen[3][1] < 0.2, seen  # and slept


def test_binary_data_output_makes_every_output_binary(server, models):
    """`"parameters": {"binary_data_output": true}` on a plain JSON request: all outputs come back
    as binary data after the JSON header; an output that asks for JSON still gets JSON."""
    x = np.random.default_rng(6).random((1, 3, 32, 32)).astype(np.float32)
    inputs = [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]
    status, headers, body = request(server, "POST", "/v2/models/tiny/infer", json.dumps(
        {"inputs": inputs, "parameters": {"binary_data_output": True}}))
    assert status == 200, body
    assert headers["content-type"] == "application/octet-stream"
    n = int(headers["inference-header-content-length"])
    out = json.loads(body[:n])["outputs"][0]
    assert out["name"] == "probabilities" and out["shape"] == [1, 10] and "data" not in out
    assert out["parameters"]["binary_data_size"] == 40 == len(body) - n
    np.testing.assert_allclose(np.frombuffer(body[n:], np.float32).reshape(1, 10), expected_tiny(models, x),
                               rtol=1e-5, atol=1e-6)
    status, headers, body = request(server, "POST", "/v2/models/tiny/infer", json.dumps(
        {"inputs": inputs, "parameters": {"binary_data_output": True},
         "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}]}))
    assert status == 200 and "inference-header-content-length" not in headers
    got = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(1, 10)
    np.testing.assert_allclose(got, expected_tiny(models, x), rtol=1e-5, atol=1e-6)


def test_inference_failure_is_500_and_the_server_keeps_serving(server):
    """A request that passes every check but fails inside OpenVINO: 500 with OpenVINO's reason,
    counted as a failed ModelInfer, and the model still serves the next request."""
    def infer(n):
        return request(server, "POST", "/v2/models/reshape3/infer", json.dumps(
            {"inputs": [{"name": "x", "shape": [n], "datatype": "FP32", "data": list(range(n))}]}))

    fail = 'ovms_requests_fail{api="KServe",interface="REST",method="ModelInfer",name="reshape3",version="1"}'

    def failures():
        for line in request(server, "GET", "/metrics")[2].decode().splitlines():
            if line.startswith(fail + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = failures()
    status, _, body = infer(4)
    assert status == 500, body
    error = json.loads(body)["error"]
    assert error.startswith("inference failed: ") and "Reshape" in error
    assert failures() == before + 1
    status, _, body = infer(6)
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["shape"] == [3, 2]


def test_standard_kserve_client(server, models):
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(server.url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        assert client.get_model_metadata("tiny")["inputs"][0]["shape"] == [1, 3, 32, 32]
        x = np.random.default_rng(5).random((1, 3, 32, 32)).astype(np.float32)
        want = expected_tiny(models, x)
        for binary in (True, False):
            inp = httpclient.InferInput("input", [1, 3, 32, 32], "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
            result = client.infer("tiny", [inp], outputs=[out], request_id="abc")
            np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-5, atol=1e-6)
            assert result.get_response()["id"] == "abc"
        # errors surface as the client's exception with our message
        bad = httpclient.InferInput("input", [1, 3, 16, 16], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
        with pytest.raises(Exception, match="does not match"):
            client.infer("tiny", [bad])
        with pytest.raises(Exception, match="not served"):
            client.get_model_metadata("nope")
    finally:
        client.close()


def _infer_body(shape, datatype="FP32", data=None, name="input"):
    n = int(np.prod(shape))
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                   "data": data if data is not None else [0.5] * n}]})


@pytest.mark.parametrize("path, body, status, message", [
    ("/v2/models/nope/infer", _infer_body([1, 16]), 404, "not served"),
    ("/v2/models/trivial/versions/7/infer", _infer_body([1, 16]), 404, "version 7"),
    ("/v2/models/trivial/infer", _infer_body([1, 15]), 400, "does not match the model's [1, 16]"),
    ("/v2/models/trivial/infer", _infer_body([1, 16], "FP64"), 400, "datatype FP64"),
    ("/v2/models/trivial/infer", _infer_body([1, 16], "INT9"), 400, "unsupported datatype"),
    ("/v2/models/trivial/infer", _infer_body([1, 16], data=[1, 2]), 400, "2 values"),
    ("/v2/models/trivial/infer", _infer_body([1, 16], data=["a"] * 16), 400, "not a (nested) list"),
    ("/v2/models/trivial/infer", _infer_body([1, 16], name="other"), 400, "no input 'other'"),
    ("/v2/models/trivial/infer", '{"inputs": [{"name": "input", "shape"', 400, "malformed JSON"),
    ("/v2/models/trivial/infer", '[1, 2]', 400, "\"inputs\" list"),
    ("/v2/models/trivial/infer", '{"inputs": []}', 400, "missing input"),
    ("/v2/models/trivial/infer", json.dumps({"inputs": json.loads(_infer_body([1, 16]))["inputs"] * 2}), 400,
     "input 'input' given twice"),
    ("/v2/models/trivial/infer", json.dumps({"inputs": json.loads(_infer_body([1, 16]))["inputs"],
                                             "outputs": [{"name": "zzz"}]}), 400, "unknown output"),
    ("/v2/nothing", "", 404, "no such endpoint"),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, path, body, status, message):
    got, _, data = request(server, "POST", path, body)
    assert got == status, data
    assert message in json.loads(data)["error"]
    ok, _, _ = request(server, "POST", "/v2/models/trivial/infer", _infer_body([1, 16]))
    assert ok == 200


def test_oversized_body_and_wrong_method(server):
    def raw(payload: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(payload)
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    # a declared length above the limit is refused before the body is read
    reply = raw(b"POST /v2/models/trivial/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413") and b"exceeds the limit" in reply
    # a chunked body is counted while it arrives
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17))  # 17 x 64 KiB > 1 MiB
    reply = raw(b"POST /v2/models/trivial/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert reply.startswith(b"HTTP/1.1 413") and b"exceeds the limit" in reply
    assert request(server, "GET", "/v2/models/trivial/infer")[0] == 405
    assert request(server, "POST", "/v2/models/trivial/infer", _infer_body([1, 16]))[0] == 200
    # the binary header length must fit in the body
    status, _, data = request(server, "POST", "/v2/models/trivial/infer", b"{}",
                              {"Inference-Header-Content-Length": "99"})
    assert status == 400 and "outside the body" in json.loads(data)["error"]


def test_metrics_count_requests(server):
    def scrape():
        text = request(server, "GET", "/metrics")[2].decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    key = 'ovms_requests_success{api="KServe",interface="REST",method="ModelInfer",name="trivial",version="1"}'
    fail = 'ovms_requests_fail{api="KServe",interface="REST",method="ModelInfer",name="trivial",version="1"}'
    hist = 'ovms_request_time_us_count{interface="REST",name="trivial",version="1"}'
    before = scrape()
    for _ in range(3):
        assert request(server, "POST", "/v2/models/trivial/infer", _infer_body([1, 16]))[0] == 200
    assert request(server, "POST", "/v2/models/trivial/infer", _infer_body([1, 3]))[0] == 400
    after = scrape()
    assert after[key] - before.get(key, 0) == 3
    assert after[fail] - before.get(fail, 0) == 1
    assert after[hist] - before.get(hist, 0) == 3
    assert after['ovms_streams{name="tiny",version="1"}'] == 2
    assert after['ovms_infer_req_queue_size{name="tiny",version="1"}'] >= 2


def test_concurrent_requests_are_all_served(server):
    async def main():
        from hosttune.bench.httpclient import Connection

        async def one(i):
            conn = Connection("127.0.0.1", server.port)
            try:
                data = [float(i)] * 16
                status, _, body = await conn.request("POST", "/v2/models/trivial/infer",
                                                     _infer_body([1, 16], data=data).encode())
                return status, json.loads(body)["outputs"][0]["data"][0]
            finally:
                await conn.close()
        return await asyncio.gather(*(one(i) for i in range(16)))

    results = asyncio.run(main())
    assert results == [(200, float(i + 1)) for i in range(16)]


def test_pool_runs_requests_in_parallel(models):
    """Two requests are in flight in OpenVINO at once with a pool of two (two streams)."""
    from hosttune.serve.engine import ServedModel

    core = ov.Core()
    served = ServedModel(core, model_repo.find(str(models), "tiny"), {"NUM_STREAMS": 2}, nireq=2)
    assert served.streams == 2 and served.nireq == 2
    peak = [0]

    async def main():
        x = np.zeros((1, 3, 32, 32), np.float32)

        async def watch():
            while True:
                peak[0] = max(peak[0], served.active)
                await asyncio.sleep(0)

        w = asyncio.ensure_future(watch())
        outs = await asyncio.gather(*(served.infer([x]) for _ in range(6)))
        w.cancel()
        return outs

    outs = asyncio.run(main())
    assert len(outs) == 6
    assert peak[0] == 2
    assert all(np.allclose(o[0], outs[0][0]) for o in outs)


def test_start_errors_are_one_line_exit_2(models, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = subprocess.run([*HOSTTUNE, "serve", "--repo", str(models), "--model", "trivial", "--rest_port", str(port)],
                           capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert r.returncode == 2 and "already in use" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    def serve(*args):
        return subprocess.run([*HOSTTUNE, "serve", "--rest_port", "0", "--ephemeral-ports", *args], capture_output=True, text=True,
                              timeout=120)

    r = serve("--repo", str(models), "--model", "missing")
    assert r.returncode == 2 and "no model 'missing'" in r.stderr
    r = serve("--repo", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    broken = tmp_path / "repo" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.xml").write_text("<net name='x'><layers><oops")
    (broken / "model.bin").write_bytes(b"")
    r = serve("--repo", str(tmp_path / "repo"), "--model", "broken")
    assert r.returncode == 2 and "not a readable ONNX or OpenVINO IR model" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (broken / "model.bin").unlink()
    r = serve("--repo", str(tmp_path / "repo"), "--model", "broken")
    assert r.returncode == 2 and "no weights file" in r.stderr
    r = serve("--repo", str(models), "--model", "trivial", "--config", '{"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}')
    assert r.returncode == 2 and "not both" in r.stderr
    r = serve("--repo", str(models), "--model", "trivial", "--config", "{nope")
    assert r.returncode == 2 and "--config" in r.stderr
    for value in ("1000001", "-1"):
        r = serve("--repo", str(models), "--model", "trivial", "--idle-poll-us", value)
        assert r.returncode == 2 and "--idle-poll-us" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_plan_instance_sets_port_cpus_and_openvino(models, tmp_path):
    cpu = sorted(os.sched_getaffinity(0))[-1]
    port = free_port()
    plan = {"schema": "hosttune.plan/1", "housekeeping": [0], "instances": [{
        "name": "node0", "node": 0, "cpus": [cpu], "cpus_list": str(cpu), "mems": [0], "mems_list": "0",
        "cores": 1, "port": port, "bind": "127.0.0.1", "model": "tiny", "streams": 1,
        "openvino": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": True},
        "ovms": {"nireq": 1}, "idle_poll_us": 1000}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.Popen([*HOSTTUNE, "serve", "--plan", str(tmp_path / "plan.json"), "--plan-instance", "node0",
                             "--repo", str(models)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert f"127.0.0.1:{port}" in line and "tiny:1 (streams 1, nireq 1), idle poll 1000 us" in line, line
        assert os.sched_getaffinity(proc.pid) == {cpu}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v2/models/tiny")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    r = subprocess.run([*HOSTTUNE, "serve", "--plan", str(tmp_path / "plan.json"), "--plan-instance", "node9",
                        "--repo", str(models)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no instance 'node9'" in r.stderr


def _set_mempolicy_calls(trace: str) -> list[tuple[str, set[int], int, int]]:
    """(mode, nodes in the mask, maxnode, return value) of each set_mempolicy in an strace log."""
    import re

    calls = []
    for m in re.finditer(r"set_mempolicy\((\w+), \[([^\]]*)\], (\d+)\) = (-?\d+)", trace):
        words = [int(w, 16) for w in m.group(2).split(",")]
        nodes = {64 * i + bit for i, w in enumerate(words) for bit in range(64) if w >> bit & 1}
        calls.append((m.group(1), nodes, int(m.group(3)), int(m.group(4))))
    return calls


def _strace(tmp_path, *command, **kwargs):
    """Run `command` under strace, tracing set_mempolicy; (the process, the trace file). strace is
    a Debian package that scripts/bootstrap installs."""
    import shutil

    strace = shutil.which("strace")
    assert strace, "strace is missing (scripts/bootstrap installs it)"
    trace = tmp_path / f"strace-{len(list(tmp_path.glob('strace-*')))}.txt"
    proc = subprocess.Popen([strace, "-qq", "-f", "-e", "trace=set_mempolicy", "-o", str(trace), *command], **kwargs)
    return proc, trace


def _node_exists(n: int) -> bool:
    return os.path.isdir(f"/sys/devices/system/node/node{n}")


@pytest.mark.parametrize("nodes", [[1], [2, 3], [0, 2], [64]])
def test_bind_memory_asks_the_kernel_for_exactly_the_plan_nodes(tmp_path, nodes):
    """set_mempolicy(MPOL_BIND) gets a mask with exactly the given nodes (across mask words) and a
    maxnode that covers them; the result follows what the kernel says: nodes this host lacks make
    the bind fail (False, for the caller to report), any existing node in the mask makes it hold."""
    code = f"from hosttune.serve.placement import bind_memory; print(bind_memory({nodes}))"
    proc, trace = _strace(tmp_path, sys.executable, "-c", code, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    calls = _set_mempolicy_calls(trace.read_text())
    assert len(calls) == 1, trace.read_text()
    mode, mask, maxnode, rc = calls[0]
    assert mode == "MPOL_BIND" and mask == set(nodes) and maxnode > max(nodes)
    holds = any(_node_exists(n) for n in nodes)
    assert (rc == 0) == holds
    assert out.strip() == str(holds)


def test_plan_instance_binds_memory_to_its_mems(models, tmp_path):
    """An instance of a 2-node plan whose mems are [1]: `hosttune serve` calls set_mempolicy with
    node 1 before it starts; on a host without node 1 the failed bind is a one-line warning and the
    server still serves."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    port = free_port()
    plan = {"schema": "hosttune.plan/1", "nodes": [{"id": 0}, {"id": 1}], "instances": [{
        "name": "node1", "node": 1, "cpus": [cpu], "cpus_list": str(cpu), "mems": [1], "mems_list": "1",
        "port": port, "bind": "127.0.0.1", "model": "trivial", "streams": 1,
        "openvino": {"PERFORMANCE_HINT": "LATENCY"}, "ovms": {"nireq": 1}}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc, trace = _strace(tmp_path, *HOSTTUNE, "serve", "--plan", str(tmp_path / "plan.json"), "--plan-instance",
                          "node1", "--repo", str(models), stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stderr.readline()]
        if "listening on" not in lines[0]:
            lines.append(proc.stderr.readline())
        assert "listening on" in lines[-1], lines
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v2/models/trivial/ready")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        import re
        import signal

        served = re.search(r" pid (\d+) ", lines[-1])  # strace's child: the server itself
        os.kill(int(served.group(1)) if served else proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    binds = [c for c in _set_mempolicy_calls(trace.read_text()) if c[0] == "MPOL_BIND"]
    assert binds and binds[0][1] == {1}, trace.read_text()
    if _node_exists(1):
        assert binds[0][3] == 0 and len(lines) == 1, lines
    else:
        assert binds[0][3] < 0
        assert lines[0].startswith("hosttune: warning: could not bind memory to node(s) 1;"), lines


def _cpuset_cgroup(tmp_name: str, cpus: str):
    """A cgroup-v1 cpuset holding only our own child (like AllowedCPUs= or a container's
    --cpuset-cpus), or None where that cannot be made."""
    base = "/sys/fs/cgroup/cpuset"
    if os.geteuid() != 0 or not os.path.isdir(base) or not os.access(base, os.W_OK):
        return None
    path = os.path.join(base, tmp_name)
    try:
        os.mkdir(path)
        for name, value in (("cpuset.cpus", cpus), ("cpuset.mems", "0")):
            with open(os.path.join(path, name), "w") as f:
                f.write(value)
    except OSError:
        if os.path.isdir(path):
            os.rmdir(path)
        return None
    return path


def test_inside_a_cpuset_narrower_than_the_plan(models, tmp_path):
    """In a unit with AllowedCPUs= / a container cpuset: the kernel keeps the instance inside it;
    hosttune warns about the plan CPUs it cannot have and fails when none is left."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    group = _cpuset_cgroup(f"hosttune-test-{os.getpid()}", str(cpus[0]))
    if group is None:
        pytest.skip("no writable cgroup-v1 cpuset here")

    def enter():
        with open(os.path.join(group, "tasks"), "w") as f:
            f.write(str(os.getpid()))

    def serve(plan_cpus):
        plan = {"schema": "hosttune.plan/1", "nodes": [{"id": 0}], "instances": [{
            "name": "node0", "node": 0, "cpus": plan_cpus, "cpus_list": "", "mems": [0], "mems_list": "0",
            "port": free_port(), "bind": "127.0.0.1", "model": "trivial", "streams": 1,
            "openvino": {"PERFORMANCE_HINT": "LATENCY"}, "ovms": {"nireq": 1}}]}
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        return subprocess.Popen([*HOSTTUNE, "serve", "--plan", str(tmp_path / "plan.json"), "--plan-instance",
                                 "node0", "--repo", str(models)], stderr=subprocess.PIPE, text=True,
                                preexec_fn=enter)

    try:
        proc = serve([cpus[1]])  # entirely outside the cpuset
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "cannot run on CPUs" in err and "Traceback" not in err
        proc = serve(cpus[:2])  # partly outside: runs on what is left, with a warning
        try:
            lines = [proc.stderr.readline(), proc.stderr.readline()]
            assert "are not allowed to this process" in lines[0], lines
            assert "listening on" in lines[1], lines
            assert os.sched_getaffinity(proc.pid) == {cpus[0]}
        finally:
            proc.terminate()  # a graceful stop (up to 10 s) on one CPU the guests may be loading
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=60)
    finally:
        deadline = time.monotonic() + 30
        while True:  # the kernel empties the group just after the exit is reaped
            try:
                os.rmdir(group)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def test_serve_timeline_benchmark_splits_a_request(tmp_path):
    """benchmarks/serve_timeline.py hooks the server's private seams (data_received,
    App.infer_now, ServedModel.infer_now, OneSend.flush): a rename would leave the benchmark
    matching no request. A short run matches every measured request of hosttune serve and of the
    leanest Python server it is compared with, and their phases add up to a request."""
    cpus = sorted(os.sched_getaffinity(0))
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "serve_timeline.py")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, script, "--requests", "40", "--warmup", "10", "--out", str(out),
                          "--server-cpu", str(cpus[-1]), "--client-cpu", str(cpus[0])],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    for count, key in (("requests", "p50_us"), ("minimal_requests", "minimal_p50_us")):
        assert summary[count] == 30
        p50 = summary[key]
        assert all(p50[name] > 0 for name in ("in flight", "read", "decode", "inference", "answer", "answer flight"))
        assert p50["beyond inference"] < p50["total"] and p50["inference"] < p50["total"]
    assert summary["raw_floor_p50_us"] > 0
    assert "<svg" in (out / "report.html").read_text()


def test_idle_wakeup_benchmark_measures_every_case(tmp_path):
    """benchmarks/idle_wakeup.py (the measurement behind --idle-poll-us): a short run gives a p50
    per case and round, and a picture."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "idle_wakeup.py")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, script, "--rounds", "2", "--count", "20", "--gap-us", "200",
                          "--cpu", str(cpu), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["p50_us"]) == {"back to back", "after a sleep", "after a busy wait", "after a 150 kB copy"}
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in summary["p50_us_per_round"].values())
    assert "<svg" in (out / "report.html").read_text()
    bad = subprocess.run([sys.executable, script, "--gap-us", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--gap-us" in bad.stderr


def test_serve_lane_benchmark_measures_lane_on_and_off(tmp_path):
    """benchmarks/serve_lane.py (the direct lane's A/B through --no-direct-lane): a short run
    measures every case on both servers in each round, compares them, and draws them."""
    cpus = sorted(os.sched_getaffinity(0))
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "serve_lane.py")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, script, "--variant", "tiny", "--rounds", "2", "--duration", "0.3",
                          "--warmup", "0.1", "--concurrency", "1", "--server-cpu", str(cpus[-1]),
                          "--client-cpu", str(cpus[0]), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["cases"]) == {f"{fmt} c1 {side}" for fmt in ("JSON", "binary") for side in ("lane", "no lane")}
    for case in summary["cases"].values():
        assert case["errors"] == 0 and len(case["p50_ms_per_round"]) == 2 and case["throughput"] > 0
    assert summary["body_bytes"]["JSON"] < 64 * 2**10  # the tiny model's JSON takes the lane too
    for cmp in summary["lane_vs_off"].values():
        assert {cmp[key]["verdict"] for key in ("p50_ms", "p99_ms", "throughput")} <= {
            "within the per-round spread", "lane better", "lane worse"}
    assert "<svg" in (out / "report.html").read_text()
