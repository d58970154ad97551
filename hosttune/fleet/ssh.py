"""One host's SSH session (Fabric): open, run, put, get -- each bounded by a timeout -- and
failures classified the way Ansible reports them: `unreachable` (cannot connect, no SSH banner,
authentication refused, host key mismatch) or `failed` (connected, but the work did not succeed).

Timeouts: `connect_timeout` bounds the TCP connect, the SSH banner, authentication and opening a
channel (paramiko's banner/auth/channel timeouts, which Fabric leaves at 15 s/30 s/1 h);
`timeout` bounds every remote command (invoke's run(timeout=...)) and every SFTP transfer
(a timeout on the SFTP channel).
"""

from __future__ import annotations

import io
import os
import shlex
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from hosttune.fleet.inventory import SSH_CONNECTIONS, FleetHost


KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "~/.ssh/known_hosts")


class HostFailure(Exception):
    """The host's work stopped: `status` is unreachable, failed or cancelled."""

    status = "failed"

    def __init__(self, reason: str, detail: dict[str, Any] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or {}


class Unreachable(HostFailure):
    status = "unreachable"


class Failed(HostFailure):
    status = "failed"


class Cancelled(HostFailure):
    status = "cancelled"


@dataclass
class Options:
    connect_timeout: int = 10  # seconds (Fabric takes whole seconds)
    timeout: float | None = 120.0  # seconds per remote command / transfer; None: no limit
    strict_host_keys: bool = False  # reject hosts that are not in known_hosts (default: accept new ones)


@dataclass
class Output:
    exit_code: int
    stdout: str
    stderr: str


def tail(text: str, lines: int = 3) -> str:
    """The last non-empty lines of a remote stream, for a one-line reason."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


class Session:
    """An SSH connection to one FleetHost. Thread-confined, except `close()`, which the
    controller may call from another thread to abort it (Ctrl-C)."""

    def __init__(self, host: FleetHost, options: Options, cancel: threading.Event | None = None):
        self.host = host
        self.options = options
        self.cancel = cancel or threading.Event()
        self._conn: Any = None
        self._closed = threading.Event()

    # -- connection ----------------------------------------------------------------------------
    def open(self) -> None:
        from fabric import Config, Connection
        from paramiko import RejectPolicy

        h, o = self.host, self.options
        if h.connection not in SSH_CONNECTIONS:
            raise Failed(f"ansible_connection={h.connection} is not supported by hosttune fleet (SSH only)")
        if h.key_file and not os.access(h.key_file, os.R_OK):
            raise Failed(f"ansible_ssh_private_key_file {h.key_file} is not readable")
        self._check_cancel()
        connect_kwargs: dict[str, Any] = {
            "banner_timeout": o.connect_timeout,
            "auth_timeout": o.connect_timeout,
            "channel_timeout": o.connect_timeout,
        }
        if h.key_file:  # like ssh -o IdentitiesOnly=yes: the inventory's key, not every key in ~/.ssh
            connect_kwargs.update(key_filename=[h.key_file], look_for_keys=False)
        if h.password:
            connect_kwargs["password"] = h.password
        conn = Connection(h.address, user=h.user, port=h.port, config=Config(),
                          connect_timeout=max(1, int(o.connect_timeout)), connect_kwargs=connect_kwargs)
        # Fabric loads no known_hosts at all (any key would be accepted): load them like ssh does,
        # so a changed host key is refused (BadHostKeyException); unknown hosts are accepted
        # in memory only, unless --strict-host-keys
        for path in KNOWN_HOSTS:
            try:
                conn.client.load_system_host_keys(os.path.expanduser(path))
            except (OSError, ValueError):
                pass  # absent or unreadable: nothing known from it
        if o.strict_host_keys:
            conn.client.set_missing_host_key_policy(RejectPolicy())
        self._conn = conn
        if self._closed.is_set():  # closed (Ctrl-C) while this was being set up
            raise Cancelled("interrupted (Ctrl-C)")
        try:
            conn.open()
        except Exception as exc:  # noqa: BLE001 - classified below
            self._check_cancel()
            raise self._connect_failure(exc) from None
        self._check_cancel()

    def _connect_failure(self, exc: Exception) -> HostFailure:
        from paramiko.ssh_exception import (AuthenticationException, BadHostKeyException,
                                            NoValidConnectionsError, SSHException)

        h, t = self.host, self.options.connect_timeout
        who = f"user {self._conn.user}" if self._conn is not None else "user ?"
        if isinstance(exc, AuthenticationException):
            key = f" with key {h.key_file}" if h.key_file else ""
            return Unreachable(f"authentication failed for {who}{key} ({exc})")
        if isinstance(exc, BadHostKeyException):
            return Unreachable(f"host key mismatch: {h.address} presented a {exc.key.get_name()} key "
                               "that known_hosts does not have for it")
        if isinstance(exc, NoValidConnectionsError):
            errors = {e.strerror or str(e) for e in exc.errors.values()}
            return Unreachable(f"cannot connect to {h.endpoint}: {', '.join(sorted(errors))}")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return Unreachable(f"connect to {h.endpoint} timed out after {t}s")
        if isinstance(exc, socket.gaierror):
            return Unreachable(f"cannot resolve {h.address} ({exc.strerror})")
        if isinstance(exc, SSHException):
            transport = self._conn.client.get_transport() if self._conn is not None else None
            cause = transport.get_exception() if transport is not None else None
            text = f"{exc}" + (f" ({cause})" if cause and str(cause) != str(exc) else "")
            if any(s in text for s in ("banner", "No existing session", "Negotiation failed")):
                return Unreachable(f"no SSH handshake from {h.endpoint} within {t}s (not an SSH server, or hung)")
            if "not found in known_hosts" in text:
                return Unreachable(f"{h.address} is not in known_hosts (strict host key checking)")
            return Unreachable(f"SSH negotiation with {h.endpoint} failed: {text}")
        if isinstance(exc, EOFError):
            return Unreachable(f"{h.endpoint} closed the connection during the SSH handshake")
        if isinstance(exc, OSError):
            return Unreachable(f"cannot connect to {h.endpoint}: {exc.strerror or exc}")
        return Failed(f"cannot connect to {h.endpoint}: {type(exc).__name__}: {exc}")

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("interrupted (Ctrl-C)")

    def close(self) -> None:
        """Close the connection (safe from any thread, idempotent)."""
        self._closed.set()
        conn = self._conn
        if conn is not None:
            # Fabric's close() does nothing until the handshake has finished; closing paramiko's
            # client too ends a handshake in progress (a host that accepted TCP and went quiet)
            for close in (conn.close, conn.client.close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing a half-open connection may raise; it is closed
                    pass

    # -- commands and transfers ----------------------------------------------------------------
    def run(self, command: str, timeout: float | None = None) -> Output:
        """Run a shell command on the host; a non-zero exit is returned, not raised."""
        from invoke.exceptions import CommandTimedOut

        self._check_cancel()
        limit = timeout if timeout is not None else self.options.timeout
        started = time.monotonic()
        try:
            result = self._conn.run(command, hide=True, warn=True, pty=False, in_stream=False, timeout=limit)
        except CommandTimedOut:
            self._check_cancel()
            raise Failed(f"timed out after {limit:g}s running: {self._display(command)}") from None
        except Exception as exc:  # noqa: BLE001 - connection lost, channel refused...
            self._check_cancel()
            raise Failed(f"SSH error running {self._display(command)}: {_exc_text(exc)}") from None
        self._check_cancel()
        if result.exited == -1 and limit and time.monotonic() - started >= limit:
            # invoke's timer closed the channel (no exit status) but, on a loaded machine, the
            # runner finished before it noticed its own timeout: still a timeout
            raise Failed(f"timed out after {limit:g}s running: {self._display(command)}")
        return Output(result.exited, result.stdout, result.stderr)

    def _display(self, command: str) -> str:
        """A command for a message: hosttune_command shown as `hosttune`, shortened."""
        if self.host.command != "hosttune" and command.startswith(self.host.command + " "):
            command = "hosttune" + command[len(self.host.command):]
        return _short_cmd(command)

    def _sftp(self) -> Any:
        sftp = self._conn.sftp()
        if self.options.timeout:
            sftp.get_channel().settimeout(self.options.timeout)
        return sftp

    def put_text(self, text: str, remote: str) -> None:
        self._check_cancel()
        try:
            self._sftp()  # opened here so that its channel carries the timeout
            self._conn.put(io.BytesIO(text.encode()), remote, preserve_mode=False)
        except Exception as exc:  # noqa: BLE001
            self._check_cancel()
            raise Failed(f"cannot upload {remote}: {_exc_text(exc)}") from None

    def get(self, remote: str, local: str) -> None:
        """Download to `local` (written to a .part file, renamed when complete)."""
        self._check_cancel()
        part = f"{local}.part"
        try:
            self._sftp()
            with open(part, "wb") as handle:  # a file object: Fabric does not interpolate {} in it
                self._conn.get(remote, handle, preserve_mode=False)
            os.replace(part, local)
        except Exception as exc:  # noqa: BLE001
            try:
                os.unlink(part)
            except OSError:
                pass
            self._check_cancel()
            raise Failed(f"cannot download {remote}: {_exc_text(exc)}") from None

    @staticmethod
    def temp_path(prefix: str, suffix: str = "") -> str:
        """A fresh, unguessable path in the host's /tmp (chosen here: no round trip for mktemp)."""
        return f"/tmp/{prefix}.{uuid.uuid4().hex}{suffix}"

    @staticmethod
    def then_remove(command: str, path: str) -> str:
        """`command`, then remove `path` on the host, keeping the command's exit code."""
        return f"{command}; rc=$?; rm -f {shlex.quote(path)}; exit $rc"

    def remove(self, path: str) -> None:
        """Best-effort cleanup of a temp file or directory of ours (never raises)."""
        if self.cancel.is_set() or self._closed.is_set() or self._conn is None:
            return
        try:
            self._conn.run(f"rm -rf {shlex.quote(path)}", hide=True, warn=True, in_stream=False,
                           timeout=self.options.connect_timeout)
        except Exception:  # noqa: BLE001 - leftover temp file is not worth failing the host
            pass

    def hosttune(self, args: list[str]) -> str:
        """The remote command line: hosttune_command (a shell prefix, e.g. "sudo -n hosttune")
        followed by quoted arguments."""
        return " ".join([self.host.command] + [shlex.quote(a) for a in args])


def _short_cmd(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."


def _exc_text(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
