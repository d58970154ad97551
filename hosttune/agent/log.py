"""Structured logs: one JSON object per line (ts, level, event, then event fields) on stdout,
which journald captures under systemd. Records of Python's logging (the engine's warnings) are
written the same way.

When stdout is the journal's stream (systemd sets JOURNAL_STREAM to its device:inode, see
systemd.exec(5)), each line starts with the sd-daemon(3) priority prefix of its level (<3> error,
<4> warning, <6> info, <7> debug): journald strips it and stores the priority, so
`journalctl -p warning -u hosttune-agent` shows the warnings and errors. Anywhere else (a
terminal, a pipe, --foreground under a test) the lines are plain JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
PRIORITIES = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>"}  # sd-daemon(3)


def connected_to_journal(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd gave this service (JOURNAL_STREAM)."""
    want = os.environ.get("JOURNAL_STREAM")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # closed, or not a real file
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


class JsonLog:
    def __init__(self, stream: TextIO | None = None, level: str = "info") -> None:
        self.stream = stream or sys.stdout
        self.min_level = LEVELS[level]
        self.journal = connected_to_journal(self.stream)
        self._lock = threading.Lock()

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        if LEVELS[level] < self.min_level:
            return
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        record = {"ts": ts, "level": level, "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None)
        line = json.dumps(record, default=str, separators=(",", ":"))
        if self.journal:
            line = PRIORITIES[level] + line
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone (closed pipe): keep running; systemd keeps the journal

    def capture_logging(self) -> None:
        """Route Python logging records (hosttune.engine, ...) into this log."""
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_Handler(self))
        root.setLevel(logging.DEBUG if self.min_level <= LEVELS["debug"] else logging.INFO)


class _Handler(logging.Handler):
    def __init__(self, log: JsonLog) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= 40 else "warning" if record.levelno >= 30 else \
            "info" if record.levelno >= 20 else "debug"
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not kill the agent
            message = str(record.msg)
        self.log("log", level=level, logger=record.name, msg=message)
