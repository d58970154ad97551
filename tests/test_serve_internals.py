"""What `hosttune serve` relies on that no public API promises: uvicorn's internals (each one a test
of its own, named after it) and the pin that keeps uvicorn at the versions they were checked on;
and the direct lane's contract (App.answers_now decides, App.infer_now cannot wait)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import tomllib

import pytest

from hosttune.errors import HosttuneError
from hosttune.serve import wire

uvicorn = pytest.importorskip("uvicorn")

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.fixture(scope="module")
def live_protocol():
    """uvicorn's own HttpToolsProtocol on a real connection (a socket pair on a real event loop),
    with a request's headers read: what hosttune's protocol sees when it decides on the lane."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    async def app(scope, receive, send):  # never answers: the request stays in its cycle
        await asyncio.sleep(3600)

    loop = asyncio.new_event_loop()
    server_side, client_side = socket.socketpair()
    protocol = HttpToolsProtocol(config=uvicorn.Config(app, lifespan="off", log_level="warning"),
                                 server_state=ServerState(), app_state={}, _loop=loop)
    transport, _ = loop.run_until_complete(loop.connect_accepted_socket(lambda: protocol, server_side))
    client_side.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
    deadline = time.monotonic() + 10
    while protocol.cycle is None and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.01))
    yield protocol
    transport.close()
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()
    client_side.close()


@pytest.mark.parametrize("name, kind", wire.UVICORN_INTERNALS, ids=[name for name, _ in wire.UVICORN_INTERNALS])
def test_uvicorn_internal_is_as_the_protocol_uses_it(name, kind, live_protocol):
    problem = wire.internal_problem(name, kind, live_protocol)
    assert problem is None, f"uvicorn {uvicorn.__version__}: {problem} (hosttune/serve/wire.py relies on it)"


def test_every_internal_is_listed_once():
    names = [name for name, _ in wire.UVICORN_INTERNALS]
    assert len(names) == len(set(names))


def test_a_changed_internal_is_named_and_the_server_does_not_start(monkeypatch):
    """A uvicorn whose protocol lacks a method hosttune overrides, or has it with other
    parameters, is refused when the protocol is built (at start), naming the internal."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    monkeypatch.delattr(HttpToolsProtocol, "on_body")
    assert wire.internals_problems() == ["HttpToolsProtocol.on_body: missing"]
    with pytest.raises(HosttuneError, match=r"HttpToolsProtocol\.on_body: missing"):
        wire.protocol_class(wire.Limits())
    monkeypatch.setattr(HttpToolsProtocol, "on_body", lambda self, data, more: None, raising=False)
    assert wire.internals_problems() == ["HttpToolsProtocol.on_body: expected method(self, body), "
                                         "found function(self, data, more)"]
    monkeypatch.undo()
    assert wire.internals_problems() == []


def test_uvicorn_and_httptools_are_pinned_to_what_the_tests_ran_on():
    """The serve extra bounds uvicorn and httptools from above, and the installed versions (the
    ones these tests run on) are inside the bounds."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        serve = tomllib.load(f)["project"]["optional-dependencies"]["serve"]
    pins = {req.name: req for req in map(Requirement, serve)}
    for name in ("uvicorn", "httptools"):
        spec = pins[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name} has no upper bound in the serve extra: {spec}"
        assert spec.contains(version(name)), f"{name} {version(name)} is outside the serve extra's {spec}"


# -- the direct lane's contract ---------------------------------------------------------------------
ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def trivial(tmp_path_factory):
    from hosttune.model import repo as model_repo

    path = tmp_path_factory.mktemp("models")
    model_repo.sample(str(path), variant="trivial", int8=False)
    return model_repo.find(str(path), "trivial", None)


def _model(entry, nireq):
    from hosttune.serve.engine import ServedModel

    return ServedModel(ov.Core(), entry, {"NUM_STREAMS": nireq}, nireq)


def _json_body(values=16):
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                   "data": list(range(values))}]}).encode()


def test_infer_now_answers_what_answers_now_accepts_and_refuses_the_rest(trivial):
    """answers_now is the one rule: infer_now answers a request it accepts (without an event
    loop: a plain call), and refuses any other at once instead of waiting; the lane asks the same
    rule, and infer gives the same answer on either side of it."""
    from hosttune.serve.app import App
    from hosttune.serve.decode import JSON_INLINE_MAX

    one, two = _model(trivial, 1), _model(trivial, 2)
    app = App([one])
    small, large = _json_body(), _json_body(16) + b" " * JSON_INLINE_MAX
    assert app.answers_now(one, len(small)) and not app.answers_now(one, len(large))
    status, body, _, _ = app.infer_now(one, small, None)
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == [float(v + 1) for v in range(16)]
    with pytest.raises(RuntimeError, match="cannot be answered without waiting"):
        app.infer_now(one, large, None)
    assert asyncio.run(app.infer(one, large, None)) == app.infer_now(one, small, None)
    headers = [(b"content-length", str(len(small)).encode())]
    assert app.lane("/v2/models/trivial/infer", headers) == (one, None)
    assert app.lane("/v2/models/trivial/infer", [(b"content-length", str(len(large)).encode())]) is None
    app.close()

    pool = App([two])
    assert not pool.answers_now(two, len(small))
    assert pool.lane("/v2/models/trivial/infer", headers) is None
    with pytest.raises(RuntimeError, match="pool of 2"):
        pool.infer_now(two, small, None)
    with pytest.raises(RuntimeError, match="pool of 2"):
        two.infer_now([])
    assert asyncio.run(pool.infer(two, small, None))[0] == 200
    pool.close()

    class Waiting(App):
        async def infer_now(self, model, body, header_len):
            return await super().infer(model, body, header_len)

    with pytest.raises(TypeError, match="infer_now must not be a coroutine"):  # refused when the lane is built
        wire.protocol_class(wire.Limits(), Waiting([one]))


def test_no_direct_lane_answers_everything_through_the_application(trivial):
    """protocol_class(direct_lane=False), what --no-direct-lane builds: every infer request reaches
    the ASGI application, with the same answer as the lane's."""
    import threading

    from hosttune.serve.app import App

    answers = {}
    for direct in (True, False):
        app = App([_model(trivial, 1)])
        called = []

        async def asgi(scope, receive, send, app=app, called=called):
            if scope["type"] == "http":
                called.append(scope["path"])
            await app(scope, receive, send)

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        server = uvicorn.Server(uvicorn.Config(asgi, loop="asyncio", lifespan="off", log_level="warning",
                                               http=wire.protocol_class(wire.Limits(), app, direct_lane=direct)))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            body = _json_body()
            with socket.create_connection(sock.getsockname(), timeout=30) as conn:
                conn.sendall(b"POST /v2/models/trivial/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                reply = b""
                while chunk := conn.recv(65536):
                    reply += chunk
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()
        head, _, answer = reply.partition(b"\r\n\r\n")
        answers[direct] = [line for line in head.split(b"\r\n") if not line.startswith(b"date:")], answer
        assert called == ([] if direct else ["/v2/models/trivial/infer"])
    assert answers[True] == answers[False] and answers[True][0][0] == b"HTTP/1.1 200 OK"


def test_no_direct_lane_switch(trivial):
    """hosttune serve --no-direct-lane serves, says so, and stops cleanly."""
    import http.client

    from tests.serverproc import Server

    srv = Server("--repo", os.path.dirname(os.path.dirname(trivial.directory)), "--model", "trivial",
                 "--no-direct-lane", "--config", '{"PERFORMANCE_HINT": "LATENCY"}')
    try:
        assert "no direct lane" in srv.banner
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        conn.request("POST", "/v2/models/trivial/infer", body=_json_body())
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        assert srv.stop() == 0
