"""The one place that runs host commands (systemctl, update-grub, grubby), as hosttune.sysfs is
the one place that touches host files.

Commands run only against the live root "/": under another root (a capture, a test tree) they
are recorded as skipped, so nothing on the machine running the tests is changed. Tests that put
stand-in commands on PATH set HOSTTUNE_RUN_COMMANDS=1 to run them under a root anyway.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

COMMAND_TIMEOUT = 300.0  # seconds; update-grub on a host with many kernels takes a while
QUERY_TIMEOUT = 30.0


def commands_enabled(live: bool) -> bool:
    return live or os.environ.get("HOSTTUNE_RUN_COMMANDS") == "1"


@dataclass
class Runner:
    """Runs host commands. `dry` records instead of running; `ran` is what the report shows."""

    live: bool
    dry: bool = False
    ran: list[dict[str, Any]] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return commands_enabled(self.live)

    def run(self, argv: list[str], why: str, env: dict[str, str] | None = None) -> bool:
        entry: dict[str, Any] = {"argv": argv, "why": why}
        if env:
            entry["env"] = env
        self.ran.append(entry)
        if self.dry:
            entry["result"] = "dry-run"
            return True
        if not self.enabled:
            entry["result"] = "skipped: not the live root"
            return True
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                  env={**os.environ, **env} if env else None)
        except FileNotFoundError:
            entry["result"] = f"not found: {argv[0]}"
            return False
        except subprocess.TimeoutExpired:
            entry["result"] = f"timed out after {COMMAND_TIMEOUT:.0f} s"
            return False
        entry["result"] = f"exit {proc.returncode}"
        if proc.returncode != 0:
            entry["stderr"] = (proc.stderr or proc.stdout).strip()[-2000:]
        return proc.returncode == 0

    def last_error(self) -> str:
        last = self.ran[-1] if self.ran else {}
        return f"`{' '.join(last.get('argv', []))}` failed ({last.get('result', '?')}): {last.get('stderr', '')}".strip()

    def query(self, argv: list[str]) -> str | None:
        """A read-only command's stdout (it runs in a dry run too); None when commands cannot run."""
        if not self.enabled:
            return None
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None
