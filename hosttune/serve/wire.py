"""The HTTP connection: uvicorn's httptools protocol with what hosttune adds to it (`protocol_class`).

Below the application (hosttune/serve/app.py): this module knows the application only through
`Lane`, what the direct lane needs of it. It is the one place that uses uvicorn's internals, each
listed once in UVICORN_INTERNALS (uvicorn is pinned to the versions they were checked on, see
pyproject.toml; tests/test_serve_internals.py checks each by name).
"""

from __future__ import annotations

import asyncio
import builtins
import importlib
import inspect
import time
from dataclasses import dataclass
from typing import Any, Protocol as TypingProtocol

from hosttune import numbers
from hosttune.errors import HosttuneError
from hosttune.serve import DEFAULT_MAX_BUFFERED
from hosttune.serve.decode import JSON_CT, dumps
from hosttune.webconfig import CHALLENGE, WebConfig

# (status, body, headers, close the connection after it): an answer, whichever path writes it
Answer = tuple[int, "bytes | list[bytes]", list[tuple[bytes, bytes]], bool]

UVICORN_MODULE = "uvicorn.protocols.http.httptools_impl"
# What Protocol uses of uvicorn that is not uvicorn's public API: (name, what it must be). A name
# is looked up in UVICORN_MODULE; "protocol." names are attributes of a protocol on a live
# connection (with a request's headers read). Kinds: "class", a type name (an object of that type),
# "object" (anything), "method(parameters)" (a function with exactly these parameter names).
UVICORN_INTERNALS: tuple[tuple[str, str], ...] = (
    ("HttpToolsProtocol", "class"),
    ("STATUS_LINE", "dict"),  # {status: b"HTTP/1.1 200 OK\r\n"}
    ("HttpToolsProtocol.connection_made", "method(self, transport)"),
    ("HttpToolsProtocol.data_received", "method(self, data)"),  # replaced (limits, upgrades)
    ("HttpToolsProtocol._unset_keepalive_if_required", "method(self)"),
    ("HttpToolsProtocol.send_400_response", "method(self, msg)"),
    ("HttpToolsProtocol.on_message_begin", "method(self)"),
    ("HttpToolsProtocol.on_url", "method(self, url)"),
    ("HttpToolsProtocol.on_header", "method(self, name, value)"),
    ("HttpToolsProtocol.on_headers_complete", "method(self)"),
    ("HttpToolsProtocol.on_body", "method(self, body)"),
    ("HttpToolsProtocol.on_message_complete", "method(self)"),
    ("HttpToolsProtocol.on_response_complete", "method(self)"),  # also what the ASGI cycle calls
    ("HttpToolsProtocol.shutdown", "method(self)"),
    ("HttpToolsProtocol.connection_lost", "method(self, exc)"),
    ("protocol.transport", "object"),  # replaced by OneSend (the ASGI cycle writes through it)
    ("protocol.loop", "object"),
    ("protocol.logger", "object"),
    ("protocol.connections", "set"),
    ("protocol.parser", "object"),  # httptools' HttpRequestParser
    ("protocol.url", "bytes"),
    ("protocol.headers", "list"),
    ("protocol.expect_100_continue", "bool"),
    ("protocol.flow.write_paused", "bool"),
    ("protocol.cycle.response_started", "bool"),
    ("protocol.cycle.response_complete", "bool"),
    ("protocol.server_state.default_headers", "list"),
)


def internals_problems(protocol: Any = None) -> list[str]:
    """Each internal of UVICORN_INTERNALS that the installed uvicorn lacks or has otherwise, as
    "name: what is wrong". The "protocol." ones only with a live `protocol`."""
    return [problem for name, kind in UVICORN_INTERNALS
            if (protocol is not None or not name.startswith("protocol."))
            and (problem := internal_problem(name, kind, protocol)) is not None]


def internal_problem(name: str, kind: str, protocol: Any = None) -> str | None:
    """What is wrong with one internal (None: it is as Protocol uses it)."""
    root, *path = name.split(".")
    if root == "protocol":
        value: Any = protocol
    else:
        try:
            value = importlib.import_module(UVICORN_MODULE)
        except ImportError as exc:
            return f"{UVICORN_MODULE}: cannot import ({exc})"
        path = [root, *path]
    try:
        for part in path:
            value = getattr(value, part)
    except AttributeError:
        return f"{name}: missing"
    if kind == "class":
        ok = isinstance(value, type)
    elif kind.startswith("method("):
        wanted = [p.strip() for p in kind[len("method("):-1].split(",") if p.strip()]
        ok = inspect.isfunction(value) and list(inspect.signature(value).parameters) == wanted
    else:
        ok = kind == "object" or isinstance(value, getattr(builtins, kind))
    if ok:
        return None
    found = f"function{inspect.signature(value)}" if inspect.isfunction(value) else type(value).__name__
    return f"{name}: expected {kind}, found {found}"


def _uvicorn_protocol() -> tuple[type, dict]:
    """uvicorn's HttpToolsProtocol and STATUS_LINE, once what Protocol uses of their classes is
    checked: a uvicorn beyond the pin fails at start, naming what changed, not in a request."""
    problems = internals_problems()
    if problems:
        import uvicorn

        raise HosttuneError(f"uvicorn {uvicorn.__version__} differs from what the HTTP protocol was built on: "
                            + "; ".join(problems), where="uvicorn (see the serve extra's pin in pyproject.toml)")
    module = importlib.import_module(UVICORN_MODULE)
    return module.HttpToolsProtocol, module.STATUS_LINE


@dataclass
class Limits:
    """What clients may hold: seconds from a request's first byte (or the connection) to the end
    of its headers, seconds from there to the end of its body, open connections in all; the
    request line's target (414 above), a request's header fields (431 above: their number, and the
    bytes of its whole head, request line included), and the request body bytes held across all
    connections at once (503 above)."""
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 512
    max_url: int = 8192
    max_headers: int = 100
    max_head_bytes: int = 64 * 2**10
    max_buffered: int = DEFAULT_MAX_BUFFERED


_REFUSAL_HEADERS = {401: [(b"www-authenticate", CHALLENGE.encode())]}


class _Stop(Exception):
    """Raised in a parser callback to stop parsing: the protocol answers `status` and closes."""


class Lane(TypingProtocol):
    """What the direct lane needs of the application (hosttune.serve.app.App)."""

    def lane(self, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[Any, int | None] | None:
        """(model, header_len) for a request the lane answers (its body read, infer_now answers
        it without waiting), None for one the ASGI path answers."""

    def infer_now(self, model: Any, body: bytes | bytearray, header_len: int | None) -> Answer:
        """The answer, computed on this thread without waiting."""

    def client_left(self) -> None:
        """A client left before the end of its request's body (counted)."""

    def busy_elsewhere(self) -> bool:
        """Whether another thread works on a request (IdlePoll)."""


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
    host was quiet (mostly inference run on a CPU that had just been idle), ~15 us when it was not.
    The price: one CPU kept busy while requests keep coming, so this is for an instance with CPUs
    of its own; an idle instance sleeps as before.
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


def protocol_class(limits: Limits, app: Lane | None = None, idle_poll_us: int = 0, direct_lane: bool = True,
                   web: WebConfig | None = None) -> type:
    """uvicorn's httptools protocol with the limits it lacks: a client that trickles its headers or
    its body is answered 408 and disconnected; a connection beyond the cap is answered 503 and
    closed at once (the keep-alive timeout already covers idle connections between requests).

    With `app` (and `direct_lane`), the direct lane: an infer request that app.lane accepts is read
    into one buffer and answered from the parser's callbacks by app.infer_now, without uvicorn's
    request cycle, task and messages. Anything else, errors included, takes the ASGI path.

    With `idle_poll_us`, the loop polls instead of sleeping for that long after each answer
    (IdlePoll).

    With `web` users (hosttune.webconfig), every request's Authorization is checked when its head
    is complete, before the lane or the application sees it: 401 with WWW-Authenticate, and the
    connection closed, otherwise."""
    import httptools

    base, status_line = _uvicorn_protocol()
    lane_app = app if direct_lane else None
    if lane_app is not None and inspect.iscoroutinefunction(lane_app.infer_now):  # it could not run here
        raise TypeError("the direct lane answers from the parser's callbacks: infer_now must not be a coroutine")
    idle_poll = IdlePoll(idle_poll_us / 1e6, app.busy_elsewhere if app else lambda: False) if idle_poll_us > 0 else None
    # request body bytes held by all connections (one event loop: no lock), against limits.max_buffered
    buffered = [0]

    class Protocol(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        # the lane's request being read: [model, header_len, body so far]
        _lane: list | None = None
        _close_after_lane = False
        # a request's head (request line and header fields): whether one is being read, its bytes
        # fed to the parser so far, its header fields; checked as bytes arrive
        _in_head = True
        _head_bytes = 0
        _header_count = 0
        _held = 0  # body bytes of this connection's request counted in `buffered`
        _refusal: tuple[int, str, bool] | None = None  # what a callback stopped the parser with (_stop)
        _after_answer: tuple[int, str] | None = None  # a refusal waiting for the answer before it
        _upgrade_body = 0  # body bytes still to come of a request whose Upgrade is ignored

        def data_received(self, data: bytes) -> None:
            """uvicorn's, with the head's size bounded before the parser sees it (the parser joins
            a header's pieces itself: an unbounded field would grow there), refusals raised in the
            callbacks answered, and an Upgrade ignored (RFC 9110 7.8: the request is answered as
            HTTP/1.1, its body included, and the connection goes on)."""
            if self._after_answer is not None:  # the connection ends after one more answer
                return
            self._unset_keepalive_if_required()
            view = memoryview(data)
            pos, end = 0, len(view)
            while pos < end and not self.transport.is_closing():
                if self._upgrade_body:  # llhttp skips the body of an upgrade: it is passed on here
                    n = min(end - pos, self._upgrade_body)
                    self._upgrade_body -= n
                    try:
                        self.on_body(bytes(view[pos:pos + n]))
                        if not self._upgrade_body:
                            self.on_message_complete()
                    except _Stop:
                        self._refuse_in_turn(*self._refusal)
                        return
                    pos += n
                    continue
                stop = end
                if self._in_head:
                    room = limits.max_head_bytes - self._head_bytes
                    if room <= 0:
                        self._refuse_in_turn(431, f"request head (request line and header fields) larger than "
                                                  f"{limits.max_head_bytes} bytes")
                        return
                    stop = min(end, pos + room)
                    self._head_bytes += stop - pos
                try:
                    self.parser.feed_data(view[pos:stop])
                except httptools.HttpParserUpgrade as exc:  # the request before it is complete
                    pos += exc.args[0]
                    continue
                except httptools.HttpParserError:
                    if self._refusal is not None:
                        self._refuse_in_turn(*self._refusal)
                    else:
                        self.logger.warning("Invalid HTTP request received.")
                        self.send_400_response("Invalid HTTP request received.")
                    return
                pos = stop

        def _stop(self, status: int, message: str, in_turn: bool = True) -> None:
            """Stop parsing: data_received answers `status` and closes the connection; `in_turn`
            (a request whose head is being read): after the answers to requests before it."""
            self._refusal = (status, message, in_turn)
            raise _Stop(message)

        def _refuse_in_turn(self, status: int, message: str, in_turn: bool = True) -> None:
            if in_turn and self.cycle is not None and not self.cycle.response_complete:
                self._after_answer = (status, message)  # answers go in order: sent by on_response_complete
                self.transport.pause_reading()
                return
            self._refuse(status, message)

        def on_url(self, url: bytes) -> None:
            if len(self.url) + len(url) > limits.max_url:
                self._stop(414, f"request target longer than {limits.max_url} bytes")
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > limits.max_headers:
                self._stop(431, f"more than {limits.max_headers} header fields")
            super().on_header(name, value)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.transport = OneSend(transport, self.loop)
            if len(self.connections) > limits.max_connections:
                self._refuse(503, f"more than {limits.max_connections} connections")
                return
            self._arm(limits.header_timeout, "headers")

        def on_message_begin(self) -> None:
            self._header_count = 0
            super().on_message_begin()
            self._arm(limits.header_timeout, "headers")

        def on_headers_complete(self) -> None:
            self._in_head = False
            if web is not None and web.users and not web.authorized(
                    next((value for name, value in self.headers if name == b"authorization"), None)):
                self._stop(401, "unauthorized: basic auth with a user of the web config is needed")
            if self.parser.should_upgrade():
                self._ignore_upgrade()
            self._arm(limits.body_timeout, "body")
            if lane_app is None or not self._take_lane():
                super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if buffered[0] + len(body) > limits.max_buffered:
                self._stop(503, f"the server holds {limits.max_buffered} bytes of request bodies: try again later",
                           in_turn=False)  # the request being answered is this one
            buffered[0] += len(body)
            self._held += len(body)
            lane = self._lane
            if lane is None:
                super().on_body(body)
                return
            lane[2] += body  # grown as it arrives: a declared length alone reserves nothing

        def on_message_complete(self) -> None:
            if self._upgrade_body:  # llhttp's, at the end of the head: the body comes through data_received
                return
            self._in_head, self._head_bytes = True, 0
            self._disarm()
            if self._lane is None:
                super().on_message_complete()
                return
            model, header_len, body = self._lane
            self._lane = None
            try:
                answer = lane_app.infer_now(model, bytes(body) if header_len is None else body, header_len)
            except Exception as exc:  # a bug, not the request: as uvicorn answers an application's
                self.logger.error("Exception in the direct lane", exc_info=exc)
                answer = (500, b"Internal Server Error", [(b"content-type", b"text/plain; charset=utf-8")], True)
            status, body, headers, close = answer
            close = close or self._close_after_lane or not self.parser.should_keep_alive()
            self._write(status, body, headers, close)
            self.on_response_complete()  # sends it; keep-alive and pipelining as after any answer
            if close:
                self.transport.close()

        def _ignore_upgrade(self) -> None:
            """llhttp treats the rest of the stream after an Upgrade request's head as another
            protocol; no upgrade is served here, so its declared body is read by data_received."""
            lengths = [value for name, value in self.headers if name == b"content-length"]
            if any(name == b"transfer-encoding" for name, _ in self.headers):
                self._stop(400, "a chunked body with Upgrade is not supported (send Content-Length)")
            if lengths:
                length = numbers.uint_or_none(lengths[0].decode("latin-1")) if len(lengths) == 1 else None
                if length is None:
                    self._stop(400, "content-length is not a non-negative integer")
                    length = -1
                self._upgrade_body = length

        def _release(self) -> None:
            buffered[0] -= self._held
            self._held = 0

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
            taken = lane_app.lane(path, self.headers)  # undecoded: App.route decodes each segment once
            if taken is None:
                return False
            model, header_len = taken
            self._lane = [model, header_len, bytearray()]
            return True

        def _write(self, status: int, body: bytes | list[bytes], headers: list[tuple[bytes, bytes]],
                   close: bool) -> None:
            """An answer the protocol writes itself (the lane's, a refusal), with the fields
            uvicorn writes before an application's (the date) and in the same order."""
            parts = body if isinstance(body, list) else [body]
            fields = [*self.server_state.default_headers, (b"content-length", b"%d" % sum(len(p) for p in parts)),
                      *headers]
            if close:
                fields.append((b"connection", b"close"))
            self.transport.writelines([b"".join([status_line[status], *(b"%s: %s\r\n" % f for f in fields), b"\r\n"]),
                                       *parts])

        def shutdown(self) -> None:
            if self._lane is not None:  # graceful: the request being read is answered, then closed
                self._close_after_lane = True
                return
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._lane is not None:  # gone before the end of its body: counted as the ASGI path does
                self._lane = None
                lane_app.client_left()
            self._release()
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            # The whole answer is written: it leaves now, not after the request's bookkeeping
            # (metrics, the ASGI task's return) that runs in the rest of this loop step.
            self.transport.flush()
            self._release()
            super().on_response_complete()
            if self._after_answer is not None:
                self._refuse(*self._after_answer)
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
            if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
                self.transport.close()  # an answer is being written: too late for a status line
                return
            self._write(status, dumps({"error": message}), [JSON_CT, *_REFUSAL_HEADERS.get(status, ())], True)
            self.transport.close()

    return Protocol
