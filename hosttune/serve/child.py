"""`hosttune serve` as a child process of another command: start it, read its start banner (the
addresses it listens on, the streams and nireq of its first model), stop it.

The one reader of the banner hosttune/serve/run.py prints; `hosttune tune` starts its candidates
with it, and the tests and benchmark scripts their servers. Import-light: no server code.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time

from hosttune.errors import HosttuneError

BANNER = "hosttune serve: listening on "
_REST = re.compile(r"https?://\S*:([0-9]{1,5}) ")  # none with --rest_port 0 alone
_GRPC = re.compile(r"grpcs?://\S*:([0-9]{1,5}) ")  # with --port
MAX_LINE = 64 << 10  # a longer line is taken in parts
MAX_OUTPUT = 64 << 10  # the last bytes of stderr kept for the error
_SERVED = re.compile(r"\(streams ([0-9]+), nireq ([0-9]+)\)")  # the first model's


class ServeChild:
    """One `hosttune serve` process (argv is the whole command line). `wait()` reads stderr up to the
    banner; stdout goes to `stdout` (a file, DEVNULL or PIPE)."""

    def __init__(self, argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None,
                 stdout: int | None = subprocess.DEVNULL):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                                     text=True, cwd=cwd, env=env)
        self.port: int | None = None
        self.grpc_port: int | None = None
        self.banner = ""
        self.served: dict[str, int] = {}
        self.output = ""  # stderr up to the banner (or to the end, when it never came)

    def wait(self, deadline: float) -> None:
        """Until the banner (time.monotonic() deadline); a child that exits or stays silent until then
        is stopped and raises, naming its last line.

        Reads the pipe a byte at a time up to the banner's newline: a buffered readline would take
        the banner along with an earlier line and select() would then wait on an empty pipe, and
        what follows the banner stays in `proc.stderr` for the caller."""
        fd = self.proc.stderr.fileno()
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.25)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            byte = os.read(fd, 1)
            if byte:
                line += byte
                if byte != b"\n" and len(line) < MAX_LINE:
                    continue
            text, line = line.decode("utf-8", "replace"), b""
            self.output = (self.output + text)[-MAX_OUTPUT:]
            if not byte:  # end of the pipe
                break
            if text.startswith(BANNER):
                rest, grpc, served = _REST.search(text), _GRPC.search(text), _SERVED.search(text)
                self.port = int(rest.group(1)) if rest else None
                self.grpc_port = int(grpc.group(1)) if grpc else None
                self.served = {"streams": int(served.group(1)), "nireq": int(served.group(2))} if served else {}
                self.banner = text
                return
        self.terminate()
        self.reap()
        last = self.output.strip().splitlines()[-1] if self.output.strip() else "no output"
        raise HosttuneError(f"hosttune serve did not start: {last}", where=" ".join(self.argv[3:]))

    def terminate(self) -> None:
        """SIGTERM, if it still runs (reap() waits for it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def reap(self, timeout: float = 15, close: bool = True) -> int:
        """Wait for its exit (killed after `timeout` s); its exit code. `close=False` leaves the rest
        of its stderr to read."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if close and self.proc.stderr:
            self.proc.stderr.close()
        return self.proc.returncode
