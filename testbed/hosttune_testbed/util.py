"""Small helpers: progress messages on stderr, console-log tails."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

_T0 = time.monotonic()
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


def say(message: str) -> None:
    """One progress line on stderr (silenced by HOSTTUNE_TESTBED_QUIET=1)."""
    if os.environ.get("HOSTTUNE_TESTBED_QUIET") == "1":
        return
    print(f"testbed [{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def clean_console(text: str) -> str:
    """Console text without ANSI escapes and carriage returns (GRUB paints the serial line)."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch == "\n" or ch == "\t" or ch >= " ")


def tail(path: str | os.PathLike, lines: int = 40) -> str:
    try:
        data = Path(path).read_bytes()[-256 * 1024 :]
    except OSError as exc:
        return f"(no console log: {exc})"
    text = clean_console(data.decode("utf-8", "replace"))
    kept = [line for line in text.split("\n") if line.strip()][-lines:]
    return "\n".join(kept) if kept else "(console log is empty)"
