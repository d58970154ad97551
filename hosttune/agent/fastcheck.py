"""The agent's steady-state check: "has any input of the last full verify changed?"

A full check (engine.verify in a forked child) costs ~25 us per setting: it builds thousands of
Items from the plan and opens, reads and closes one file per setting (210 ms on a 768-CPU,
4,096-IRQ host). But engine.verify is a function of what it reads: the plan, the files it reads
(HostFS.read), the directories it lists, the paths it tests, the state file and the commands it
queries. So the child that ran the full verify also records those inputs (`record`): a digest of
every value it read, as HostFS.read returned it. Between full checks the daemon keeps the /sys and
/proc files open and re-reads them with os.pread (one syscall each, no path walk), re-reads the few
other inputs, and digests them the same way (`FastCheck.unchanged`). Same digest: the same inputs,
so engine.verify would return the same rows and statuses as last time, and the last summary stands.
Any difference (a value, a file gone, a listing, the state file, a command's output) and the daemon
runs the full check as before, which records the inputs again.

What this relies on: a held /sys or /proc file re-read at offset 0 shows the current value (the
kernel re-runs show() for a read at 0), and a removed one fails (ENODEV) rather than reading old
text. The state file is compared by its stat (inode, size, times): it is replaced by rename, under
the lock, which the recording child holds. Under a root that is a plain directory tree (a test
or a benchmark), a file replaced by rename keeps its old content behind a held descriptor; such
trees are changed in place by the tests.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import resource
import zlib
from array import array
from collections.abc import Iterable
from typing import Any

from hosttune import runner, state
from hosttune.sysfs import HostFS

HELD = ("sys/", "proc/")  # pseudo-files: held open and re-read with pread
FIRST_FD = 1024  # held files from here up: select() takes descriptors below 1024 only
FD_MARGIN = 256  # descriptors above the held ones


def _digest(values: list[Any]) -> str:
    return hashlib.blake2b(json.dumps(values, separators=(",", ":")).encode(), digest_size=16).hexdigest()


def _held_digest(values: Iterable[bytes]) -> str:
    """Of the values as HostFS.read returns them, UTF-8 encoded: in the daemon, the raw bytes less
    trailing newlines, which are the same bytes exactly when the raw text is valid UTF-8 (when it
    is not, the digests differ and the check is a full one). Streamed: no list of 8,000 values."""
    h = hashlib.blake2b(digest_size=16)
    for value in values:
        h.update(len(value).to_bytes(4, "little") + value)
    return h.hexdigest()


def _pread(fd: int) -> bytes:
    data = os.pread(fd, 8192, 0)
    while data and len(data) % 8192 == 0:  # rare: a value of 8 KiB or more
        more = os.pread(fd, 8192, len(data))
        if not more:
            break
        data += more
    return data


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read(path: str) -> str | None:
    """What HostFS.read returns for a file (no size cap: such inputs are small here)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data.decode("utf-8", "replace").rstrip("\n")


def _listdir(path: str) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


class Recorder:
    """Counts runner.Runner.query calls (systemctl is-active ...) during a verify, with their output."""

    def __init__(self) -> None:
        self.queries: list[list[Any]] = []
        self._orig = runner.Runner.query

    def __enter__(self) -> Recorder:
        orig, queries = self._orig, self.queries

        def query(this: runner.Runner, argv: list[str]) -> str | None:
            out = orig(this, argv)
            queries.append([list(argv), out])
            return out

        runner.Runner.query = query  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        runner.Runner.query = self._orig  # type: ignore[method-assign]


def record(fs: HostFS, queries: list[list[Any]]) -> dict[str, Any]:
    """The inputs of the verify just run on `fs` (its read cache still full), taken while the state
    lock is held. Held paths come as one newline-joined string (cheap to ship and to compare)."""
    files, dirs = fs.recorded()
    cache = fs._cache  # files read -> value (None included: absent is an input too)
    held = sorted(k for k, v in cache.items() if v is not None and k.startswith(HELD))
    held_set = set(held)
    other = sorted(k for k in cache if k not in held_set)
    exists = sorted(k for k in fs._exists if k not in cache)
    listed = sorted(fs._dirs)
    root = fs._prefix
    return {
        # ~45 bytes a path, 8,000 paths: compressed ~10x, so the daemon never holds the list as objects
        "held": base64.b64encode(zlib.compress("\n".join(held).encode(), 6)).decode(),
        "held_digest": _held_digest(cache[k].encode() for k in held),
        "other": other, "exists": exists, "dirs": listed, "queries": [q[0] for q in queries],
        "live": fs.is_live,
        "other_digest": _digest([[cache[k] for k in other], [fs._exists[k] for k in exists],
                                 [fs._dirs[k] for k in listed], [q[1] for q in queries],
                                 _stat(root + state.STATE_FILE.lstrip("/"))]),
    }


class FastCheck:
    """The daemon's side: the held descriptors and the digests of the last full verify."""

    def __init__(self, root: str) -> None:
        self.prefix = root if root.endswith("/") else root + "/"
        self.fds = array("i")  # 4 bytes per held file
        self.held_key = ""  # digest of the held paths' list: reopened only when it changes
        self.spec: dict[str, Any] | None = None

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds, self.held_key, self.spec = array("i"), "", None

    def forget(self) -> None:
        """The next check is a full one (descriptors kept for the next record)."""
        self.spec = None

    def load(self, spec: dict[str, Any]) -> bool:
        """Take a full verify's record; False (and no fast path) when the files cannot be held."""
        key = _digest([spec["held"]])
        if key != self.held_key:
            self.close()
            paths = zlib.decompress(base64.b64decode(spec["held"]))
            if not _enough_fds(FIRST_FD + paths.count(b"\n") + 1):
                return False
            prefix, start = self.prefix.encode(), 0
            try:
                while paths:  # one path at a time: no list of 8,000 strings in the daemon
                    end = paths.find(b"\n", start)
                    path = paths[start:] if end < 0 else paths[start:end]
                    fd = os.open(prefix + path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                    try:  # above FD_SETSIZE: the agent's pipes and sockets stay where select() works
                        self.fds.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_FD))
                    finally:
                        os.close(fd)
                    if end < 0:
                        break
                    start = end + 1
            except OSError:
                self.close()
                return False
            self.held_key = key
        self.spec = {k: v for k, v in spec.items() if k != "held"}
        return True

    def unchanged(self) -> bool:
        """True when every input of the last full verify reads as it did then."""
        spec = self.spec
        if spec is None:
            return False
        try:
            digest = _held_digest(_pread(fd).rstrip(b"\n") for fd in self.fds)
        except OSError:  # e.g. ENODEV: the file went away with its device
            return False
        if digest != spec["held_digest"]:
            return False
        prefix = self.prefix
        query = runner.Runner(live=spec["live"]).query
        other = [[_read(prefix + k) for k in spec["other"]],
                 [os.path.lexists(prefix + k) for k in spec["exists"]],
                 [_listdir(prefix + k) for k in spec["dirs"]],
                 [query(argv) for argv in spec["queries"]],
                 _stat(prefix + state.STATE_FILE.lstrip("/"))]
        return _digest(other) == spec["other_digest"]


def _enough_fds(count: int) -> bool:
    """Raise the soft descriptor limit up to the hard one when `count` files are to be held."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            return False
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return True
