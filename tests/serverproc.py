"""Start a real `hosttune serve` in a subprocess and wait until it listens: REST on any free port
(`--rest_port 0 --ephemeral-ports`; a later --rest_port wins, --port 0 adds gRPC on any free port).

A test harness, used by the tests and the benchmark scripts (which put the checkout on sys.path)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

HOSTTUNE = [sys.executable, "-m", "hosttune"]


class Server:
    def __init__(self, *args: str, cwd: str | None = None, env: dict | None = None, timeout: float = 90):
        self.proc = subprocess.Popen([*HOSTTUNE, "serve", "--rest_port", "0", "--ephemeral-ports", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
        self.port = None
        self.grpc_port = None
        deadline = time.monotonic() + timeout
        buf = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.5)
            if ready:
                line = self.proc.stderr.readline()
                if not line:
                    break
                buf += line
                if "listening on " in line:
                    rest = re.search(r"https?://[^ ]*:([0-9]{1,5}) ", line)  # none with --rest_port 0 alone
                    grpc = re.search(r"grpcs?://[^ ]*:([0-9]{1,5}) ", line)  # with --port
                    self.port = int(rest.group(1)) if rest else None
                    self.grpc_port = int(grpc.group(1)) if grpc else None
                    self.banner = line
                    return
            elif self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"server did not start: {buf}")

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_without_repo() -> dict:
    env = dict(os.environ)
    env.pop("HOSTTUNE_MODEL_REPO", None)
    return env
