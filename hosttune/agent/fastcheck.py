"""The agent's steady-state check: "has any input of the last full verify changed?"

A full check (engine.verify in a forked child) costs ~25 us per setting: it builds thousands of
Items from the plan and opens, reads and closes one file per setting (210 ms on a 768-CPU,
4,096-IRQ host). But engine.verify is a function of what it reads: the plan, the files it reads
(HostFS.read), the directories it lists, the paths it tests, the state file and the commands it
queries. So the child that ran the full verify also records those inputs (`record`): a digest of
the exact bytes of every /sys and /proc file it read, and of the other values as HostFS.read
returned them. Between full checks the daemon keeps the /sys and /proc files open and re-reads
them with os.pread (one syscall each, no path walk, the loop in C), re-reads the few other inputs,
and digests them the same way (`FastCheck.unchanged`). Same digest: the same inputs, so
engine.verify would return the same rows and statuses as last time, and the last summary stands.
Any difference (a byte of a value, a file gone, a listing, the state file, a command's output) and
the daemon runs the full check as before, which records the inputs again.

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
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any

from hosttune import runner, state, sysfs
from hosttune.sysfs import HostFS

HELD = ("sys/", "proc/")  # pseudo-files: held open and re-read with pread
READ_SIZE = 4097  # a sysfs value is one page at most: one pread reads it whole
BATCH = 512  # held files read per map() call
MAX_VALUE = sysfs.MAX_READ  # what HostFS reads of a file at most
LIST_FROM = 8  # keys of one parent directory from which a listing is cheaper than a lexists each
FIRST_FD = 1024  # held files from here up: select() takes descriptors below 1024 only
FD_MARGIN = 256  # descriptors above the held ones


def _digest(values: list[Any]) -> str:
    return hashlib.blake2b(json.dumps(values, separators=(",", ":")).encode(), digest_size=16).hexdigest()


def _held_digest(batches: Iterable[list[bytes]]) -> str:
    """Of the held files' raw bytes, in order: their concatenation, then the array of their
    lengths (so no two different lists share a digest). Taken batch by batch, so the daemon never
    holds 8,000 values at once; the same values in any batching give the same digest."""
    h = hashlib.blake2b(digest_size=16)
    lengths = array("I")
    for values in batches:
        h.update(b"".join(values))
        lengths.extend(map(len, values))
    h.update(lengths.tobytes())
    return h.hexdigest()


def _pread_batches(fds: array) -> Iterator[list[bytes]]:
    """Each held file read again from offset 0, BATCH at a time. map() over os.pread keeps the
    loop in C: per file, the syscall is then most of the cost (Python code per file added half)."""
    for start in range(0, len(fds), BATCH):
        batch = fds[start:start + BATCH]
        values = list(map(os.pread, batch, repeat(READ_SIZE, len(batch)), repeat(0, len(batch))))
        if max(map(len, values), default=0) >= READ_SIZE:  # rare: a value of READ_SIZE or more
            values = [_read_rest(fd, v) if len(v) >= READ_SIZE else v for fd, v in zip(batch, values)]
        yield values


def _read_rest(fd: int, data: bytes) -> bytes:
    while len(data) < MAX_VALUE:
        more = os.pread(fd, READ_SIZE, len(data))
        if not more:
            break
        data += more
    return data[:MAX_VALUE]


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
    """During a verify on `fs`: keeps the raw bytes of the files it reads (HostFS.keep_raw) and
    counts its runner.Runner.query calls (systemctl is-active ...) with their output."""

    def __init__(self, fs: HostFS) -> None:
        self.fs = fs
        self.queries: list[list[Any]] = []
        self._orig = runner.Runner.query

    def __enter__(self) -> Recorder:
        orig, queries = self._orig, self.queries
        self.fs.keep_raw(True)

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
    held = sorted(k for k, v in cache.items() if v is not None and k.startswith(HELD) and fs.raw(k) is not None)
    held_set = set(held)
    other = sorted(k for k in cache if k not in held_set)
    exists = sorted(k for k in fs._exists if k not in cache)
    listed = sorted(fs._dirs)
    root = fs._prefix
    return {
        # ~45 bytes a path, 8,000 paths: compressed ~10x, so the daemon never holds the list as objects
        "held": base64.b64encode(zlib.compress("\n".join(held).encode(), 6)).decode(),
        "held_digest": _held_digest([[fs.raw(k) for k in held]]),
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
            try:
                os.close(fd)
            except OSError:  # EBADF: closed already; nothing else fails a close of a read-only file
                pass
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
            digest = _held_digest(_pread_batches(self.fds))
        except OSError:  # e.g. ENODEV: the file went away with its device (an IRQ freed, a CPU
            self.close()  # unplugged); reopened at the next load, which may name the same paths
            return False
        if digest != spec["held_digest"]:
            return False
        prefix = self.prefix
        query = runner.Runner(live=spec["live"]).query
        other = [[_read(prefix + k) for k in spec["other"]],
                 _lexists_all(prefix, spec["exists"]),
                 [_listdir(prefix + k) for k in spec["dirs"]],
                 [query(argv) for argv in spec["queries"]],
                 _stat(prefix + state.STATE_FILE.lstrip("/"))]
        return _digest(other) == spec["other_digest"]


def _lexists_all(prefix: str, keys: list[str]) -> list[bool]:
    """os.path.lexists of each key under prefix. Keys that share a parent directory (a verify tests
    every cpufreq policyN of a 768-CPU host) are looked up in one listing of it: one getdents
    instead of a path walk per key (4 us each here). A name is listed exactly when lexists is
    true of it, dangling symlinks included; an unreadable parent is left to lexists."""
    by_parent: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_parent.setdefault(key.rpartition("/")[0], []).append(i)
    out = [False] * len(keys)
    for parent, indexes in by_parent.items():
        names = None
        if len(indexes) >= LIST_FROM:
            try:
                names = set(os.listdir(prefix + parent))
            except FileNotFoundError:
                names = set()
            except OSError:
                names = None
        for i in indexes:
            out[i] = keys[i].rpartition("/")[2] in names if names is not None else os.path.lexists(prefix + keys[i])
    return out


def _enough_fds(count: int) -> bool:
    """Raise the soft descriptor limit up to the hard one when `count` files are to be held."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            return False
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return True
