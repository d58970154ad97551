"""`hosttune serve`'s process: the listening socket, uvicorn (httptools parser, uvloop when
installed) with hosttune's protocol (hosttune/serve/wire.py) around the application
(hosttune/serve/app.py), the gRPC server on the same event loop (hosttune/serve/grpc_server.py),
systemd's readiness notice and the signals."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from typing import Any

from hosttune.errors import HosttuneError
from hosttune.sdnotify import notify
from hosttune.serve.app import App
from hosttune.serve.wire import Limits, protocol_class
from hosttune.webconfig import WebConfig


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


# OVMS's --log_level to uvicorn's: uvicorn's own INFO lines (its start and stop chatter) are
# replaced by hosttune's start line, so INFO shows what WARNING does
UVICORN_LEVELS = {"TRACE": "trace", "DEBUG": "debug", "INFO": "warning", "WARNING": "warning", "ERROR": "error"}


def serve_forever(app: App, sock: socket.socket | None, host: str, quiet: bool = False, limits: Limits | None = None,
                  idle_poll_us: int = 0, direct_lane: bool = True, grpc_port: int | None = None,
                  log_level: str = "INFO", web: WebConfig | None = None) -> None:
    """Serve REST on `sock` (None: no REST) and, with `grpc_port` (0: any free port), KServe v2 gRPC
    on host:grpc_port, both on one event loop, until SIGTERM/SIGINT. With `web` (--web-config-file):
    both over TLS and/or with basic auth, its headers on every REST answer."""
    import asyncio

    import uvicorn

    try:
        import uvloop

        loop, loop_factory = "uvloop", uvloop.new_event_loop
    except ImportError:
        loop, loop_factory = "asyncio", asyncio.new_event_loop
    limits = limits or Limits()
    http = protocol_class(limits, app, idle_poll_us, direct_lane, web)
    # ws="none": no protocol upgrade is served, an Upgrade request is answered as HTTP/1.1 (wire.py)
    config = uvicorn.Config(app, loop=loop, http=http, ws="none", lifespan="off", access_log=False,
                            log_level=UVICORN_LEVELS[log_level], timeout_keep_alive=75, server_header=False,
                            backlog=1024, timeout_graceful_shutdown=10,
                            headers=list(web.headers) if web is not None else None)
    config.load()
    config.ssl = web.tls if web is not None else None  # the context of the web config, as is
    server = uvicorn.Server(config)
    if sock is not None:
        sock.listen(1024)
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again against the handler
    # it found at start: with the default one the process would die with 143. A no-op handler there
    # makes SIGTERM a clean exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    # uvicorn's own run() is this runner around serve(): here gRPC starts on the same loop first
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, server, sock, host, quiet, idle_poll_us, direct_lane, grpc_port, limits, web))
    app.close()


async def _serve(app: App, server: Any, sock: socket.socket, host: str, quiet: bool, idle_poll_us: int,
                 direct_lane: bool, grpc_port: int | None, limits: Limits, web: WebConfig | None) -> None:
    import asyncio

    grpc_server = None
    if grpc_port is not None:
        from hosttune.serve import grpc_server as kserve_grpc  # grpcio only when gRPC is served

        with app.placed.spawning_service():  # grpc's threads are service threads
            grpc_server, grpc_port = await kserve_grpc.start(app, host, grpc_port, limits.max_connections, web)
    # config.json's poll (hosttune/serve/reload.py), when serving one
    poller = asyncio.create_task(app.reloader.run()) if app.reloader is not None else None
    try:
        shown = f"[{host}]" if ":" in host else host
        if not quiet:
            models = ", ".join(f"{m.name}:{m.version} (streams {m.streams}, nireq {m.nireq})"
                               for m in app.served())
            tls = "s" if web is not None and web.tls else ""
            addresses = [f"http{tls}://{shown}:{sock.getsockname()[1]}"] if sock is not None else []
            addresses += [f"grpc{tls}://{shown}:{grpc_port}"] if grpc_server is not None else []
            polling = f", idle poll {idle_poll_us} us" if idle_poll_us else ""
            lane = "" if direct_lane else ", no direct lane"
            auth = f", basic auth ({len(web.users)} users)" if web is not None and web.users else ""
            print(f"hosttune serve: listening on {' and '.join(addresses)} pid {os.getpid()} - {models}"
                  f"{polling}{lane}{auth}", file=sys.stderr, flush=True)
        notify("READY=1")  # Type=notify units: the models are compiled; a no-op outside systemd
        if sock is not None:
            await server.serve(sockets=[sock])  # uvicorn.Server
        else:  # gRPC only (OVMS without --rest_port): until SIGTERM/SIGINT
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
    finally:
        if poller is not None:
            poller.cancel()
            app.reloader.close()
        # after REST's graceful stop: gRPC refuses new calls and answers those in flight
        if grpc_server is not None:
            await kserve_grpc.stop(grpc_server)
