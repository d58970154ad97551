"""What apply overwrote, kept so restore can put it back, plus the lock that serialises appliers.

The state file (<root>/var/lib/hosttune/state.json) is written atomically. An apply run first
records every value it is about to change in a journal ("run"), then writes, then clears the
journal. A journal found at start means a run was killed midway: it is rolled back first.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from hosttune.errors import HosttuneError, LockHeld
from hosttune.sysfs import HostFS

STATE_DIR = "/var/lib/hosttune"
STATE_FILE = f"{STATE_DIR}/state.json"
LOCK_FILE = f"{STATE_DIR}/lock"
SCHEMA = "hosttune.state/1"
# what a saved original can be (hosttune.areas.base.KINDS): a sysfs value, a config file's bytes,
# a service's state, the kernel arguments grubby added
RECORD_KINDS = ("sysfs", "file", "service", "grubby")


@dataclass
class State:
    """originals: key -> {"path", "kind", "value"} as found before the first apply touched it
    (value None: the file did not exist). run: the journal of an apply in progress."""

    originals: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # immovable IRQs, services, ...

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, "originals": self.originals, "run": self.run,
                           "extras": self.extras}, indent=1, sort_keys=True)


def load(fs: HostFS) -> State:
    """The state file, or an empty State if there is none. Corrupt or foreign: an error, nothing changed."""
    text = fs.read(STATE_FILE)
    if text is None:
        return State()
    where = fs.host_path(STATE_FILE)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HosttuneError(f"state file is corrupt ({exc.msg} at line {exc.lineno}); move it away to "
                            f"start over, but then restore cannot know the original values", where=where) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise HosttuneError(f"not a hosttune state file (schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                            f"expected {SCHEMA})", where=where)
    originals = data.get("originals")
    if not isinstance(originals, dict) or not all(
            isinstance(v, dict) and {"path", "kind"} <= set(v) and isinstance(v["path"], str)
            and v["kind"] in RECORD_KINDS for v in originals.values()):
        raise HosttuneError("state file has malformed 'originals'", where=where)
    return State(originals=originals, run=data.get("run"), extras=data.get("extras") or {})


def save(fs: HostFS, state: State) -> None:
    try:
        fs.write_file_atomic(STATE_FILE, state.to_json() + "\n", mode=0o600)
    except OSError as exc:
        raise HosttuneError(f"cannot write state file: {exc.strerror} (errno {exc.errno})",
                            where=exc.filename) from None


class Lock:
    """An exclusive flock on <root>/var/lib/hosttune/lock; waits up to `wait` seconds."""

    def __init__(self, fs: HostFS, wait: float = 30.0):
        self.path = fs.host_path(LOCK_FILE)
        self.wait = wait
        self.fd: int | None = None

    def __enter__(self) -> Lock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(self.fd)
                    self.fd = None
                    raise LockHeld(f"another hosttune run (pid {holder}) holds the lock; "
                                        f"waited {self.wait:.0f}s", where=self.path) from None
                time.sleep(0.1)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
