"""sd_notify(3) without libsystemd, for the agent and hosttune serve (both Type=notify units): one
datagram per message to $NOTIFY_SOCKET, and the watchdog period from $WATCHDOG_USEC. Both variables
are taken out of the environment (as sd_notify's unset_environment does) so that commands the
process runs do not inherit them."""

from __future__ import annotations

import os
import socket
import time

from hosttune import numbers


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None)
        usec = env.pop("WATCHDOG_USEC", None)
        wd_pid = env.pop("WATCHDOG_PID", None)
        self.address: str | None = None
        self.error: str | None = None
        self._sock: socket.socket | None = None
        if address:
            if address.startswith("@"):  # abstract namespace
                self.address = "\0" + address[1:]
            elif address.startswith("/"):
                self.address = address
            else:
                self.error = f"unsupported NOTIFY_SOCKET {address!r} (only AF_UNIX paths are)"
        # the watchdog is for this process only if WATCHDOG_PID (when set) names it
        self.watchdog_usec = 0
        period = numbers.uint_or_none(usec, 2**63 - 1)  # ASCII digits: '²'.isdigit() is true
        if period and (not wd_pid or wd_pid == str(os.getpid())):
            self.watchdog_usec = period

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_period(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout, as sd_watchdog_enabled(3) advises)."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            self.error = f"sd_notify failed: {exc.strerror or exc}"
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def notify(*fields: str) -> bool:
    """Send one message (e.g. READY=1) and close; False outside systemd or when it failed."""
    notifier = Notifier()
    try:
        return notifier.send(*fields)
    finally:
        notifier.close()
