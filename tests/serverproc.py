"""Start a real `hosttune serve` in a subprocess and wait until it listens: REST on any free port
(`--rest_port 0 --ephemeral-ports`; a later --rest_port wins, --port 0 adds gRPC on any free port).

A test harness, used by the tests and the benchmark scripts (which put the checkout on sys.path)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time

from hosttune.errors import HosttuneError
from hosttune.serve.child import ServeChild

HOSTTUNE = [sys.executable, "-m", "hosttune"]


class Server(ServeChild):
    """A started server: `port` (REST), `grpc_port`, `banner`; `stop()` returns its exit code and
    leaves the rest of its stderr in `proc.stderr`."""

    def __init__(self, *args: str, cwd: str | None = None, env: dict | None = None, timeout: float = 90):
        super().__init__([*HOSTTUNE, "serve", "--rest_port", "0", "--ephemeral-ports", *args], cwd=cwd, env=env,
                         stdout=subprocess.PIPE)
        try:
            self.wait(time.monotonic() + timeout)
        except HosttuneError:
            raise RuntimeError(f"server did not start: {self.output}") from None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        self.terminate()
        return self.reap(close=False)


def response(target, method: str, path: str, body=None, headers: dict | None = None,
             timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh HTTP connection to 127.0.0.1: `target` is a port or a Server. Status,
    headers (lower-case names) and body."""
    port = target if isinstance(target, int) else target.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def request(target, method: str, path: str, body=None, headers: dict | None = None,
            timeout: float = 60) -> tuple[int, bytes]:
    """`response` without the headers: status and body."""
    status, _, data = response(target, method, path, body, headers, timeout)
    return status, data


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_without_repo() -> dict:
    env = dict(os.environ)
    env.pop("HOSTTUNE_MODEL_REPO", None)
    return env
