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
