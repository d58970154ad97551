"""One host's SSH session (Fabric): open, run, put, get -- each bounded by a timeout -- and
failures classified the way Ansible reports them: `unreachable` (cannot connect, no SSH banner,
authentication refused, host key mismatch) or `failed` (connected, but the work did not succeed).

Timeouts: `connect_timeout` bounds the TCP connect, the SSH banner, authentication and opening a
channel (paramiko's banner/auth/channel timeouts, which Fabric leaves at 15 s/30 s/1 h);
`timeout` bounds every remote command (invoke's run(timeout=...)) and every SFTP transfer
(a timeout on the SFTP channel).

The inventory's ssh options (hosttune/fleet/sshargs.py) choose the path: ProxyJump hops (Fabric
gateways, one direct-tcpip channel per hop) or a ProxyCommand, and the host key checking. With
ansible_become, every hosttune command runs through sudo (`become_prefix`).
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


GLOBAL_KNOWN_HOSTS = ["/etc/ssh/ssh_known_hosts"]
USER_KNOWN_HOSTS = ["~/.ssh/known_hosts"]
MAX_STDERR = 64 * 1024  # of a ProxyCommand, read for its failure message


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


class ProxyCommandSocket:
    """A ProxyCommand's stdin/stdout as the socket of an SSH transport (what paramiko's ProxyCommand
    does, except: run by /bin/sh like ssh runs it; EOF when the command exits, where paramiko's
    would spin until the timeout; stderr kept in a file for the failure message, never a full pipe)."""

    def __init__(self, command: str):
        import subprocess
        import tempfile

        self.command = command
        self.closed_by_us = False
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0,
                                        start_new_session=True)  # Ctrl-C is ours to handle, not its
        self.timeout: float | None = None

    def send(self, data: bytes) -> int:
        from paramiko.ssh_exception import ProxyCommandFailure

        try:
            self.process.stdin.write(data)
        except OSError as exc:
            raise ProxyCommandFailure(self.command, exc.strerror) from None
        return len(data)

    def recv(self, size: int) -> bytes:
        """Like a socket: what is there (b"" once the command has exited), or socket.timeout."""
        import select

        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            raise socket.timeout()
        return os.read(self.process.stdout.fileno(), size)

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    @property
    def closed(self) -> bool:
        return self.process.returncode is not None

    _closed = closed  # paramiko looks at either

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return tail(self._stderr.read(MAX_STDERR).decode(errors="replace"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.closed_by_us = True
            self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except Exception:  # noqa: BLE001 - ignores SIGTERM: it must not outlive us
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class Session:
    """An SSH connection to one FleetHost. Thread-confined, except `close()`, which the
    controller may call from another thread to abort it (Ctrl-C)."""

    def __init__(self, host: FleetHost, options: Options, cancel: threading.Event | None = None):
        self.host = host
        self.options = options
        self.cancel = cancel or threading.Event()
        self._conn: Any = None
        self._hops: list[Any] = []  # ProxyJump connections, first hop first
        self._proxy: ProxyCommandSocket | None = None
        self._closed = threading.Event()

    # -- connection ----------------------------------------------------------------------------
    def open(self) -> None:
        from fabric import Config, Connection

        h, o = self.host, self.options
        if h.connection not in SSH_CONNECTIONS:
            raise Failed(f"ansible_connection={h.connection} is not supported by hosttune fleet (SSH only)")
        keys = ([h.key_file] if h.key_file else []) + h.ssh.identity_files
        for key in keys:
            if not os.access(key, os.R_OK):
                what = "ansible_ssh_private_key_file" if key == h.key_file else "identity file (ansible_ssh_*_args)"
                raise Failed(f"{what} {key} is not readable")
        self._check_cancel()
        timeouts = {"banner_timeout": o.connect_timeout, "auth_timeout": o.connect_timeout,
                    "channel_timeout": o.connect_timeout}
        connect_kwargs: dict[str, Any] = dict(timeouts)
        if keys:  # like ssh -o IdentitiesOnly=yes: the inventory's keys, not every key in ~/.ssh
            connect_kwargs.update(key_filename=keys, look_for_keys=False)
        if h.password and h.ssh.password_auth is not False:
            connect_kwargs["password"] = h.password
        timeout = max(1, int(o.connect_timeout))
        # ProxyJump hops: each connected through the one before (Fabric's gateway: a direct-tcpip
        # channel of the previous hop's transport). A hop authenticates with the host's keys first,
        # then with what ssh would use for it (its ~/.ssh/config entry, the agent, ~/.ssh/id_*)
        hops: list[Any] = []
        for hop in h.ssh.jump:
            hop_kwargs = dict(timeouts, key_filename=keys, look_for_keys=True) if keys else dict(timeouts)
            hops.append(Connection(hop.host, user=hop.user, port=hop.port, config=Config(),
                                   gateway=hops[-1] if hops else None, connect_timeout=timeout,
                                   connect_kwargs=hop_kwargs))
        # no gateway from the inventory: the ssh config's ProxyJump/ProxyCommand for the host, if any
        # (Fabric reads it); the inventory set one, even "none": only that (False: none at all)
        gateway = hops[-1] if hops else (False if h.ssh.proxy_set else None)
        conn = Connection(h.address, user=h.user, port=h.port, config=Config(), gateway=gateway,
                          connect_timeout=timeout, connect_kwargs=connect_kwargs)
        for c in hops + [conn]:
            self._host_key_policy(c)
        self._hops, self._conn = hops, conn
        if self._closed.is_set():  # closed (Ctrl-C) while this was being set up
            raise Cancelled("interrupted (Ctrl-C)")
        for i, hop_conn in enumerate(hops):
            try:
                hop_conn.open()
            except Exception as exc:  # noqa: BLE001 - classified below
                self._check_cancel()
                raise self._connect_failure(exc, hop_conn, hop=h.ssh.jump[i],
                                            via=h.ssh.jump[i - 1] if i else None) from None
        if h.ssh.proxy_command is not None:
            self._start_proxy_command(conn)
        try:
            conn.open()
        except Exception as exc:  # noqa: BLE001 - classified below
            self._check_cancel()
            raise self._connect_failure(exc, conn, via=h.ssh.jump[-1] if hops else None) from None
        self._check_cancel()

    def _host_key_policy(self, conn: Any) -> None:
        """Fabric loads no known_hosts at all (any key would be accepted): load them like ssh does,
        so a changed host key is refused (BadHostKeyException); unknown hosts are accepted in
        memory only, unless --strict-host-keys or StrictHostKeyChecking=yes. The inventory's
        UserKnownHostsFile/GlobalKnownHostsFile replace ssh's defaults; StrictHostKeyChecking=no:
        no host key is checked (ssh then connects to a changed key too)."""
        from paramiko import RejectPolicy

        h = self.host
        mode = "yes" if self.options.strict_host_keys else (h.ssh.strict_host_keys or "accept-new")
        if mode == "no":
            return  # Fabric's AutoAddPolicy, with nothing loaded: every key accepted, none saved
        system = GLOBAL_KNOWN_HOSTS if h.ssh.global_known_hosts is None else h.ssh.global_known_hosts
        user = USER_KNOWN_HOSTS if h.ssh.user_known_hosts is None else h.ssh.user_known_hosts
        for path in [*system, *user]:
            try:
                conn.client.load_system_host_keys(os.path.expanduser(path))
            except (OSError, ValueError):
                pass  # absent or unreadable: nothing known from it
        if mode == "yes":
            conn.client.set_missing_host_key_policy(RejectPolicy())

    def _start_proxy_command(self, conn: Any) -> None:
        """The inventory's ProxyCommand, tokens expanded with the user/port Fabric resolved, run by
        /bin/sh as ssh runs it (`exec` so that the shell does not linger); its pipe is the socket."""
        from hosttune.fleet.sshargs import SshArgError, expand_proxy_command

        try:
            command = expand_proxy_command(self.host.ssh.proxy_command or "", conn.host, int(conn.port), conn.user)
        except SshArgError as exc:
            raise Failed(str(exc)) from None
        try:
            self._proxy = ProxyCommandSocket(command)
        except OSError as exc:
            raise Unreachable(f"cannot start the ProxyCommand ({_exc_text(exc)})") from None
        conn.connect_kwargs["sock"] = self._proxy
        if self._closed.is_set():
            self._proxy.close()
            raise Cancelled("interrupted (Ctrl-C)")

    def _connect_failure(self, exc: Exception, conn: Any, hop: Any = None, via: Any = None) -> HostFailure:
        """Why `conn` (the host, or jump host `hop`) could not be reached, in one line. `via`: the
        jump host the connection went through."""
        from paramiko.ssh_exception import (AuthenticationException, BadHostKeyException, ChannelException,
                                            NoValidConnectionsError, SSHException)

        h, t = self.host, self.options.connect_timeout
        if hop is not None:
            endpoint = address = f"jump host {hop}"
        else:
            endpoint, address = h.endpoint, h.address
        if isinstance(exc, ChannelException):  # the jump host could not open the TCP connection
            jump = f"jump host {via}" if via is not None else "the jump host of ~/.ssh/config"
            return Unreachable(f"{jump} cannot connect to {conn.host}:{conn.port}: {exc.text or exc}")
        proxy = self._proxy_failure(endpoint) if self._proxy is not None else None
        if proxy is not None:
            return proxy
        if via is not None:
            endpoint += f" (via jump host {via})"
        who = f"user {conn.user}"
        if isinstance(exc, AuthenticationException):
            keys = ([h.key_file] if h.key_file else []) + h.ssh.identity_files
            key = f" with key {', '.join(keys)}" if keys else ""
            on = f" on {endpoint}" if hop is not None or via is not None else ""
            return Unreachable(f"authentication failed for {who}{on}{key} ({exc})")
        if isinstance(exc, BadHostKeyException):
            return Unreachable(f"host key mismatch: {address} presented a {exc.key.get_name()} key "
                               "that known_hosts does not have for it")
        if isinstance(exc, NoValidConnectionsError):
            errors = {e.strerror or str(e) for e in exc.errors.values()}
            return Unreachable(f"cannot connect to {endpoint}: {', '.join(sorted(errors))}")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return Unreachable(f"connect to {endpoint} timed out after {t}s")
        if isinstance(exc, socket.gaierror):
            return Unreachable(f"cannot resolve {conn.host if hop is None else address} ({exc.strerror})")
        if isinstance(exc, SSHException):
            transport = conn.client.get_transport()
            cause = transport.get_exception() if transport is not None else None
            text = f"{exc}" + (f" ({cause})" if cause and str(cause) != str(exc) else "")
            if any(s in text for s in ("banner", "No existing session", "Negotiation failed")):
                return Unreachable(f"no SSH handshake from {endpoint} within {t}s (not an SSH server, or hung)")
            if "not found in known_hosts" in text:
                return Unreachable(f"{address} is not in known_hosts (strict host key checking)")
            return Unreachable(f"SSH negotiation with {endpoint} failed: {text}")
        if isinstance(exc, EOFError):
            return Unreachable(f"{endpoint} closed the connection during the SSH handshake")
        if isinstance(exc, OSError):
            return Unreachable(f"cannot connect to {endpoint}: {exc.strerror or exc}")
        return Failed(f"cannot connect to {endpoint}: {type(exc).__name__}: {exc}")

    def _proxy_failure(self, endpoint: str) -> HostFailure | None:
        """The ProxyCommand exited (could not reach the host): its exit code and stderr."""
        proxy = self._proxy
        try:
            code = proxy.process.wait(timeout=1)
        except Exception:  # noqa: BLE001 - still running: the failure is the host's, not the proxy's
            return None
        if proxy.closed_by_us:
            return None
        why = proxy.stderr_text() or "no output"
        return Unreachable(f"ProxyCommand for {endpoint} exited {code} before the SSH handshake: {why}")

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("interrupted (Ctrl-C)")

    def close(self) -> None:
        """Close the connection (safe from any thread, idempotent)."""
        self._closed.set()
        conns = ([self._conn] if self._conn is not None else []) + self._hops[::-1]  # the host, then its hops
        for conn in conns:
            # Fabric's close() does nothing until the handshake has finished; closing paramiko's
            # client too ends a handshake in progress (a host that accepted TCP and went quiet)
            for close in (conn.close, conn.client.close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing a half-open connection may raise; it is closed
                    pass
        if self._proxy is not None:
            self._proxy.close()

    # -- commands and transfers ----------------------------------------------------------------
    def run(self, command: str, timeout: float | None = None) -> Output:
        """Run a shell command on the host; a non-zero exit is returned, not raised. With a become
        password, it goes on the command's stdin (read by `sudo -S`, never on a command line)."""
        from invoke.exceptions import CommandTimedOut

        self._check_cancel()
        limit = timeout if timeout is not None else self.options.timeout
        become = self.become_prefix()
        stdin: Any = io.StringIO(self.host.become_password + "\n") if become and self.host.become_password else False
        started = time.monotonic()
        try:
            result = self._conn.run(command, hide=True, warn=True, pty=False, in_stream=stdin, timeout=limit)
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
        if become and become in command and _sudo_refused(result.exited, result.stdout, result.stderr):
            raise Failed(f"ansible_become: sudo -u {self.host.become_user} failed on the host: {tail(result.stderr)}",
                         {"exit_code": result.exited, "stderr": tail(result.stderr, 10)})
        return Output(result.exited, result.stdout, result.stderr)

    def become_prefix(self) -> str:
        """`sudo ... -u USER -- ` when the host's hosttune runs as ansible_become_user (ansible_become,
        and the login user is another one); "" otherwise. sudo runs hosttune_command directly
        (no shell), so a sudoers rule may allow just that command. Without a become password,
        -n: fail at once rather than wait for one; with it, -S reads it from stdin, no prompt."""
        h = self.host
        if not h.become or self._conn is None or self._conn.user == h.become_user:
            return ""
        flags = "-S -p ''" if h.become_password else "-n"
        return f"sudo {flags} -u {shlex.quote(h.become_user)} -- "

    def _display(self, command: str) -> str:
        """A command for a message: the become prefix left out, hosttune_command shown as
        `hosttune`, shortened."""
        become = self.become_prefix()
        if become and command.startswith(become):
            command = command[len(become):]
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
        """The remote command line of hosttune: the become prefix (sudo), hosttune_command (a shell
        prefix, e.g. "/opt/hosttune/bin/hosttune") and the quoted arguments. Every hosttune run
        on a host is built here."""
        return self.become_prefix() + " ".join([self.host.command] + [shlex.quote(a) for a in args])


def _sudo_refused(exit_code: int, stdout: str, stderr: str) -> bool:
    """sudo itself failed (no password allowed, wrong password, not in sudoers, command not
    found): exit 1, nothing on stdout, its own `sudo: ...` line on stderr; or sudo is not
    installed (the shell's 127)."""
    if exit_code == 127:
        return "sudo: not found" in stderr or "sudo: command not found" in stderr
    return exit_code == 1 and not stdout.strip() and any(line.startswith("sudo: ") for line in stderr.splitlines())


def _short_cmd(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."


def _exc_text(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
