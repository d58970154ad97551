"""Real SSH endpoints on 127.0.0.1 for the fleet tests and benchmark.

Each `Sshd` is Debian's /usr/sbin/sshd run in the foreground (`-D -e`) with its own config, host key,
authorized_keys and pid file in a temp dir, listening on its own 127.0.0.1 port. Needs root (it
logs in as root) and openssh-server (scripts/bootstrap installs it).

Also: a TCP listener that accepts and never speaks (a hung host), and a port nobody listens on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

SSHD = "/usr/sbin/sshd"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def missing() -> str | None:
    """Why real sshd endpoints cannot run here, or None."""
    if os.geteuid() != 0:
        return "the sshd endpoints log in as root: run the tests as root"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing (scripts/bootstrap installs openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is missing (openssh-client)"
    return None


def hosttune_command() -> str:
    """The remote `hosttune` of the checkout the tests run from: this interpreter, this source tree."""
    return f"env PYTHONPATH={REPO} {sys.executable} -m hosttune"


def keygen(path: str) -> str:
    for old in (path, path + ".pub"):
        if os.path.exists(old):
            os.unlink(old)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hosttune-test", "-f", path],
                   check=True, stdin=subprocess.DEVNULL)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Sshd:
    """One sshd on 127.0.0.1:port that accepts `authorized_key` for root (and any user allowed to
    read it: authorized_keys is world-readable, the workdir may not be).

    `log_level` DEBUG1 makes the log show each forwarded connection (`direct-tcpip`, a jump host's
    work); `hosts` runs sshd in a mount namespace of its own where /etc/hosts is that text, so
    that names resolve for this sshd (and what it forwards to) and nowhere else."""

    def __init__(self, workdir: str, authorized_key: str, force_command: str | None = None,
                 port: int | None = None, log_level: str = "ERROR", hosts: str | None = None):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = port or free_port()
        self.host_key = keygen(os.path.join(workdir, "host_key"))
        self.authorized = os.path.join(workdir, "authorized_keys")
        shutil.copyfile(authorized_key, self.authorized)
        os.chmod(self.authorized, 0o644)  # sshd reads it as the user logging in
        self.hosts_file = None
        if hosts is not None:
            self.hosts_file = os.path.join(workdir, "hosts")
            with open(self.hosts_file, "w") as handle:
                handle.write(hosts)
        self.config = os.path.join(workdir, "sshd_config")
        self.log = os.path.join(workdir, "sshd.log")
        lines = [
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {os.path.join(workdir, 'sshd.pid')}",
            f"AuthorizedKeysFile {self.authorized}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the temp dir lives under world-writable /tmp
            "UseDNS no",
            "PrintMotd no",
            "MaxStartups 200",
            "MaxSessions 50",
            f"LogLevel {log_level}",
            "Subsystem sftp internal-sftp",
        ]
        self.forced_pids = os.path.join(workdir, "forced.pids")
        if force_command:  # its pid is noted: sshd lets it outlive the session, stop() ends it
            lines.append(f"ForceCommand echo $$ >> {self.forced_pids}; exec {force_command}")
        with open(self.config, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.forced_command_name = force_command.split()[0] if force_command else ""
        self.proc: subprocess.Popen | None = None

    def start(self) -> Sshd:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        command = [SSHD, "-D", "-e", "-f", self.config]
        if self.hosts_file:  # unshare and sh exec: the pid stays sshd's
            command = ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                       self.hosts_file, *command]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        try:
            wait_port(self.port, proc=self.proc)
        except RuntimeError as exc:
            self.stop()
            with open(self.log) as handle:
                raise RuntimeError(f"sshd on port {self.port}: {exc}\n{handle.read()}") from None
        return self

    def log_text(self) -> str:
        with open(self.log, errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        """Stop this sshd and the sessions it forked (each session is its own process group)."""
        if self.proc is None:
            return
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for p in [self.proc.pid] + [c.pid for c in children]:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        psutil.wait_procs(children, timeout=3)
        self.proc = None
        if os.path.exists(self.forced_pids):
            with open(self.forced_pids) as handle:
                pids = [int(x) for x in handle.read().split() if x.isdigit()]
            for pid in pids:
                try:
                    p = psutil.Process(pid)
                    if self.forced_command_name in p.name():
                        p.terminate()
                except psutil.NoSuchProcess:
                    pass
            os.unlink(self.forced_pids)


class SilentListener:
    """Accepts TCP connections on 127.0.0.1 and never says a word (an SSH host that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        for c in self.conns:
            c.close()
        self.sock.close()


def closed_port() -> int:
    """A 127.0.0.1 port that nothing listens on (connection refused)."""
    return free_port()
