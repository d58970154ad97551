"""The metrics/status HTTP server: GET /metrics (Prometheus text), /status (JSON), / (index).

http.server's ThreadingHTTPServer in a daemon thread; one short-lived thread per request. With a
web config (hosttune.webconfig, agent.web_config_file): TLS, its handshake in the request's thread
(a client that stalls it holds only that thread, for at most the handler's timeout), and basic
auth on every path (401 with WWW-Authenticate otherwise).
"""

from __future__ import annotations

import json
import os
import select
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hosttune.agent.metrics import CONTENT_TYPE
from hosttune.webconfig import CHALLENGE, WebConfig


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], routes: dict[str, Callable[[], tuple[str, bytes]]],
                 web: WebConfig | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.routes = routes
        self.web = web  # replaced as a whole on reload: a request sees the old one or the new one
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        web = self.web
        if web is None or web.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_Handler.timeout)
        try:
            tls = web.tls.wrap_socket(request, server_side=True)  # the handshake, here in this thread
        except OSError:  # ssl.SSLError too
            return  # not TLS, a refused client certificate, a timeout: nothing to answer
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the address with getfqdn(): a DNS lookup at start
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "hosttune-agent"
    protocol_version = "HTTP/1.0"
    timeout = 10  # a client that connects and sends nothing does not hold a thread for long

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        web = self.server.web
        route = self.routes_for(self.path.split("?", 1)[0])
        extra: list[tuple[str, str]] = list(web.headers) if web is not None else []
        if web is not None and not web.authorized(self.headers.get("Authorization")):
            code, ctype, body = 401, "text/plain; charset=utf-8", b"unauthorized\n"
            extra.append(("WWW-Authenticate", CHALLENGE))
        elif route is None:
            code, ctype, body = 404, "text/plain; charset=utf-8", b"not found: try /metrics or /status\n"
        else:
            try:
                ctype, body = route()
                code = 200
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                code, ctype, body = 500, "text/plain; charset=utf-8", f"error: {exc}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def routes_for(self, path: str) -> Callable[[], tuple[str, bytes]] | None:
        return self.server.routes.get(path.rstrip("/") or "/")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # no line per scrape in the journal


class StatusServer:
    """Serves in a daemon thread that sleeps in poll() until a client connects or stop() is called
    (no periodic wake-ups: serve_forever's poll interval would cost CPU all day)."""

    def __init__(self, listen: str, port: int, metrics: Callable[[], str], status: Callable[[], dict[str, Any]],
                 web: WebConfig | None = None) -> None:
        routes = {
            "/metrics": lambda: (CONTENT_TYPE, metrics().encode()),
            "/status": lambda: ("application/json", (json.dumps(status(), indent=1, default=str) + "\n").encode()),
            "/": lambda: ("text/plain; charset=utf-8", b"hosttune agent: /metrics /status\n"),
        }
        self.httpd = _Server((listen, port), routes, web)  # raises OSError (address in use, ...)
        self.httpd.timeout = 0  # handle_request() below is only called when a client is waiting
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self.thread = threading.Thread(target=self._serve, name="hosttune-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def web(self) -> WebConfig | None:
        return self.httpd.web

    @web.setter
    def web(self, web: WebConfig | None) -> None:
        """A reloaded web config takes effect from the next connection, without a rebind."""
        self.httpd.web = web

    def start(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.httpd.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            for fd, _ in poller.poll():
                if fd == self.httpd.fileno() and not self._stopping:
                    self.httpd.handle_request()  # accept; ThreadingMixIn answers in a new thread

    def stop(self) -> None:
        """Stop serving and close the listening socket (requests in flight finish on their own)."""
        if self._stopping:
            return
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.httpd.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)
