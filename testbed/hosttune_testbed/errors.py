"""Errors of the guest testbed.

`TestbedError` is a user mistake (unknown topology, guest not running): the CLI prints one line and
exits 2. `GuestError` is a guest that failed (did not boot, SSH never came up); its message carries
the tail of the console log so the cause is visible where the failure is reported.
"""

from __future__ import annotations

from hosttune.errors import HosttuneError


class TestbedError(HosttuneError):
    """A user-facing testbed error (exit code 2)."""

    __test__ = False  # not a pytest test class


class GuestError(HosttuneError):
    """A guest or image build failed (exit code 1)."""

    exit_code = 1


class GuestCommandError(GuestError):
    """A command run in the guest with check=True exited non-zero."""

    def __init__(self, message: str, returncode: int, stdout: str, stderr: str):
        super().__init__(message)
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
