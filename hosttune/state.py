"""What apply overwrote, kept so restore can put it back, plus the lock that serialises appliers.

The state file (<root>/var/lib/hosttune/state.json) is written atomically. An apply run first
records every value it is about to change in a journal ("run"), then writes, then clears the
journal. A journal found at start means a run was killed midway: it is rolled back first.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from hosttune.errors import HosttuneError, LockHeld
from hosttune.safeyaml import brief
from hosttune.sysfs import HostFS

STATE_DIR = "/var/lib/hosttune"
STATE_FILE = f"{STATE_DIR}/state.json"
LOCK_FILE = f"{STATE_DIR}/lock"
SCHEMA = "hosttune.state/1"
# what a saved original can be (hosttune.areas.base.KINDS): a sysfs value, a config file's bytes,
# a service's state, the kernel arguments grubby added
RECORD_KINDS = ("sysfs", "file", "service", "grubby")


# json.dumps's own encoders, made once: json.dumps builds one per call (a third of to_json's time)
_json_string = json.encoder.encode_basestring_ascii
_json_record = json.JSONEncoder(sort_keys=True).encode


@dataclass
class State:
    """originals: key -> {"path", "kind", "value"} as found before the first apply touched it
    (value None: the file did not exist). run: the journal of an apply in progress."""

    originals: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: dict[str, Any] | None = None
    # key -> why the host refused a write to it (an Item with remember_refusal): not retried;
    # kept in the file as extras.refused
    refused: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # services, ...

    def to_json(self) -> str:
        """One original per line, sorted. Not json.dumps(indent=...): indenting runs CPython's pure
        Python encoder, 0.45 s for the 7,900 originals of a 768-CPU, 4,096-IRQ host; this is the C
        encoder's line per original (~20 ms)."""
        extras = {**self.extras, "refused": self.refused} if self.refused else self.extras
        head = json.dumps({"schema": SCHEMA, "run": self.run, "extras": extras}, sort_keys=True)
        rows = ",\n".join(f" {_json_string(key)}: {_json_record(value)}"
                          for key, value in sorted(self.originals.items()))
        return head[:-1] + ',\n"originals": {\n' + rows + "\n}}"


# the reason shown for a refusal an older hosttune recorded without one (extras.immovable_irqs)
LEGACY_REFUSAL = "the kernel refused this write"
MAX_STATE_BYTES = 64 << 20  # the originals of a 4096-IRQ host are a few MB; config files' bytes add little
_RECOVER = ("fix that field, or move the file away to start over (restore then cannot put back "
            "the original values)")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9@_.:-]{0,255}", re.ASCII)  # a unit name, never an option


class _Malformed(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")


def load(fs: HostFS) -> State:
    """The state file, or an empty State if there is none.

    Corrupt, foreign, too large or malformed (a field of the wrong type, a record without its
    kind, a path with '..'): one HosttuneError naming the field and how to recover; nothing changed.
    """
    where = STATE_FILE if fs.is_live else os.path.join(fs.root, STATE_FILE.lstrip("/"))
    try:
        data = fs.read_bytes(STATE_FILE, limit=MAX_STATE_BYTES)
    except OSError:
        raise HosttuneError(f"state file is larger than {MAX_STATE_BYTES >> 20} MiB: not hosttune's; "
                            f"move it away to start over", where=where) from None
    if data is None:
        if fs.exists(STATE_FILE):  # a FIFO, a directory, a symlink out of the root, unreadable
            raise HosttuneError("state file exists but cannot be read as a regular file inside the root; "
                                "move it away to start over", where=where)
        return State()
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise HosttuneError(f"state file is corrupt (not UTF-8); {_RECOVER}", where=where) from None
    except json.JSONDecodeError as exc:
        raise HosttuneError(f"state file is corrupt ({exc.msg} at line {exc.lineno}); {_RECOVER}",
                            where=where) from None
    except (ValueError, RecursionError):  # a 5000-digit number, nesting deeper than the parser goes
        raise HosttuneError(f"state file is corrupt (not hosttune's JSON); {_RECOVER}", where=where) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = brief(doc.get("schema")) if isinstance(doc, dict) else "none"
        raise HosttuneError(f"not a hosttune state file (schema {found}, expected {SCHEMA})", where=where)
    try:
        return _checked(doc, fs)
    except _Malformed as exc:
        raise HosttuneError(f"malformed state file: {exc}; {_RECOVER}", where=where) from None


def _checked(doc: dict[str, Any], fs: HostFS) -> State:
    """The State of a parsed state file, every field checked before engine code touches it."""
    originals = doc.get("originals")
    if not isinstance(originals, dict):
        raise _Malformed("originals", "must be a mapping")
    for key, record in originals.items():
        _check_record(record, f"originals[{brief(key, 60)}]", fs)
    run = doc.get("run")
    if run is not None:
        if not isinstance(run, dict):
            raise _Malformed("run", "must be a mapping or null")
        changes = run.get("changes", [])
        if not isinstance(changes, list):
            raise _Malformed("run.changes", "must be a list")
        for i, record in enumerate(changes):
            # journals written before records named their value kept it under "before"
            legacy = isinstance(record, dict) and "value" not in record
            _check_record(record, f"run.changes[{i}]", fs, value="before" if legacy else "value")
    extras = doc.get("extras") or {}
    if not isinstance(extras, dict):
        raise _Malformed("extras", "must be a mapping")
    extras = dict(extras)
    refused = extras.pop("refused", {})
    if not isinstance(refused, dict) or not all(isinstance(v, str) for v in refused.values()):
        raise _Malformed("extras.refused", "must be a mapping of path to the reason its write was refused")
    # written by hosttune before refusals kept their reason: a list of IRQ affinity paths
    legacy = extras.pop("immovable_irqs", [])
    if not isinstance(legacy, list) or not all(isinstance(p, str) for p in legacy):
        raise _Malformed("extras.immovable_irqs", "must be a list of paths")
    refused = {**{path: LEGACY_REFUSAL for path in legacy}, **refused}
    services = extras.get("services", {})
    if not isinstance(services, dict) or not all(isinstance(v, dict) for v in services.values()):
        raise _Malformed("extras.services", "must be a mapping of service name to its state")
    return State(originals=originals, run=run, refused=refused, extras=extras)


def _check_record(record: Any, field: str, fs: HostFS, value: str = "value") -> None:
    """One saved original (see hosttune.areas.base KINDS: what each kind's put_back reads)."""
    if not isinstance(record, dict):
        raise _Malformed(field, "must be a mapping")
    kind = record.get("kind")
    if kind not in RECORD_KINDS:
        raise _Malformed(f"{field}.kind", f"must be one of {', '.join(RECORD_KINDS)}, got {brief(kind)}")
    path = record.get("path")
    if not isinstance(path, str):
        raise _Malformed(f"{field}.path", f"must be a string, got {brief(path)}")
    if kind in ("sysfs", "file"):  # a file under the root; other kinds' keys name a unit or the boot entries
        if not path.startswith("/"):
            raise _Malformed(f"{field}.path", f"must be an absolute path, got {brief(path)}")
        try:
            fs.check_path(path)
        except HosttuneError:
            raise _Malformed(f"{field}.path", f"leaves the root ('..' or NUL): {brief(path)}") from None
    if not isinstance(record.get("area", ""), str):
        raise _Malformed(f"{field}.area", "must be a string")
    if kind in ("sysfs", "file") and not isinstance(record.get(value), (str, type(None))):
        raise _Malformed(f"{field}.{value}", f"must be a string or null, got {brief(record.get(value))}")
    if kind == "file":
        _check_file_record(record, field)
    elif kind == "service":
        service = record.get("service")
        if not isinstance(service, str) or not _SERVICE_NAME.fullmatch(service):
            raise _Malformed(f"{field}.service", f"must be a systemd unit name, got {brief(service)}")
        for flag in ("active", "enabled"):
            if not isinstance(record.get(flag, False), bool):
                raise _Malformed(f"{field}.{flag}", "must be true or false")
    elif kind == "grubby":
        entries = record.get("entries", {})
        if not isinstance(entries, dict) or not all(
                isinstance(kernel, str) and isinstance(change, dict)
                and all(isinstance(change.get(k, []), list) and all(isinstance(a, str) for a in change.get(k, []))
                        for k in ("added", "previous"))
                for kernel, change in entries.items()):
            raise _Malformed(f"{field}.entries", "must map kernels to {added: [args], previous: [args]}")


def _check_file_record(record: dict[str, Any], field: str) -> None:
    if record.get("data") is not None:
        try:
            base64.b64decode(record["data"], validate=True)
        except (TypeError, ValueError):
            raise _Malformed(f"{field}.data", "must be base64 text or null") from None
    mode = record.get("mode", 0o644)
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise _Malformed(f"{field}.mode", f"must be permission bits (0-4095), got {brief(mode)}")
    for owner in ("uid", "gid"):
        ident = record.get(owner)
        if ident is not None and (not isinstance(ident, int) or isinstance(ident, bool) or not 0 <= ident < 2**32):
            raise _Malformed(f"{field}.{owner}", f"must be a numeric id or null, got {brief(ident)}")


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
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:  # chattr +i, a read-only filesystem, a symlink planted as the lock
            raise HosttuneError(f"cannot open the lock file: {exc.strerror} (errno {exc.errno}); nothing was "
                                f"changed", where=self.path) from None
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
