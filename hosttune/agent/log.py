"""Structured logs: one JSON object per line (ts, level, event, then event fields) on stdout,
which journald captures under systemd. Records of Python's logging (the engine's warnings) are
written the same way."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLog:
    def __init__(self, stream: TextIO | None = None, level: str = "info") -> None:
        self.stream = stream or sys.stdout
        self.min_level = LEVELS[level]
        self._lock = threading.Lock()

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        if LEVELS[level] < self.min_level:
            return
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        record = {"ts": ts, "level": level, "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None)
        line = json.dumps(record, default=str, separators=(",", ":"))
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
