"""`hosttune serve`'s process: the listening socket, uvicorn (httptools parser, uvloop when
installed) with hosttune's protocol (hosttune/serve/wire.py) around the application
(hosttune/serve/app.py), systemd's readiness notice and the signals."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys

from hosttune.errors import HosttuneError
from hosttune.serve.app import App
from hosttune.serve.wire import Limits, protocol_class


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


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify units) that we are ready; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError:
        pass


def serve_forever(app: App, sock: socket.socket, host: str, quiet: bool = False, limits: Limits | None = None,
                  idle_poll_us: int = 0, direct_lane: bool = True) -> None:
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    http = protocol_class(limits or Limits(), app, idle_poll_us, direct_lane)
    # ws="none": no protocol upgrade is served, an Upgrade request is answered as HTTP/1.1 (wire.py)
    config = uvicorn.Config(app, loop=loop, http=http, ws="none", lifespan="off", access_log=False, log_level="warning",
                            timeout_keep_alive=75, server_header=False, backlog=1024, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    sock.listen(1024)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not quiet:
        models = ", ".join(f"{m.name}:{m.version} (streams {m.streams}, nireq {m.nireq})" for m in app.models.values())
        polling = f", idle poll {idle_poll_us} us" if idle_poll_us else ""
        lane = "" if direct_lane else ", no direct lane"
        print(f"hosttune serve: listening on http://{shown}:{port} pid {os.getpid()} - {models}{polling}{lane}",
              file=sys.stderr, flush=True)
    sd_notify("READY=1")
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again against the handler
    # it found at start: with the default one the process would die with 143. A no-op handler there
    # makes SIGTERM a clean exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    app.close()
