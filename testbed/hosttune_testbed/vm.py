"""QEMU guests for tests: boot from a copy-on-write overlay of the cached image, reach them by SSH.

    with Guest(topology="default") as g:          # boots, waits for SSH (one retry), then
        print(g.ssh("nproc").stdout)               # shuts down and deletes the overlay
        g.put("x.py", "/root/x.py"); g.reboot()

A guest's state lives in ${HOSTTUNE_RUN:-/tmp/hosttune-testbed}/<name>/state.json, so another
process can `Guest.attach(name)` to it (SSH, shutdown): Molecule's create and destroy run as
separate ansible-playbook processes. `detach=True` (the CLI's `up`) leaves QEMU running when this
process exits; otherwise QEMU is killed when the process exits, whatever way it exits (atexit,
plus PR_SET_PDEATHSIG when started from the main thread).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hosttune import cpulist
from hosttune_testbed import paths
from hosttune_testbed.errors import GuestCommandError, GuestError, TestbedError
from hosttune_testbed.qemu import BootSpec, Topology, qemu_args, resolve_accel
from hosttune_testbed.util import say, tail

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-o", "ConnectTimeout=10",
    "-o", "ServerAliveInterval=15",
    "-o", "ServerAliveCountMax=8",
]
CONSOLE_QUIET_S = 90  # past the boot timeout, a console silent this long means a stuck guest
KERNEL_ARGS_DROPIN = "/etc/default/grub.d/05-hosttune-testbed.cfg"

_live: dict[str, Guest] = {}  # guests this process must not leave running
_counter = 0


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        raise TestbedError(f"{name} must be a number of seconds") from None


def boot_timeout(accel: str) -> float:
    """Seconds to wait for SSH after QEMU starts: HOSTTUNE_TESTBED_BOOT_TIMEOUT, 300 under TCG."""
    return _env_seconds("HOSTTUNE_TESTBED_BOOT_TIMEOUT", 300 if accel == "tcg" else 120)


def free_port(exclude: Sequence[int] = (), host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (bind to port 0), not in `exclude`."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise GuestError("no free TCP port found on 127.0.0.1")


def ports_in_use() -> set[int]:
    """Ports recorded by guests that are running now (so two guests never get the same)."""
    used = set()
    for state in list_states():
        if state.get("running") and state.get("port"):
            used.add(int(state["port"]))
    return used


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise TestbedError(
            f"invalid guest name {name!r}: letters, digits, '.', '_', '-' (at most 63)"
        )
    return name


def _pid_alive(pid: int | None, marker: str | None = None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    if marker:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return marker in cmdline
    return True


def _marker(name: str) -> str:
    return f"hosttune-{name},process="


def list_states() -> list[dict[str, Any]]:
    """state.json of every guest under the run root, with `running` freshly checked."""
    out = []
    root = paths.run_root()
    for state_file in sorted(root.glob("*/state.json")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        state["running"] = _pid_alive(state.get("pid"), _marker(state.get("name", "")))
        out.append(state)
    return out


class QMP:
    """A minimal QMP client on QEMU's unix socket: one command per connection."""

    def __init__(self, path: str | os.PathLike, timeout: float = 10.0):
        self.path = str(path)
        self.timeout = timeout

    def command(self, name: str, arguments: dict | None = None) -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            reader = sock.makefile("r", encoding="utf-8")
            self._read(reader)  # greeting
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            self._reply(reader)
            message: dict[str, Any] = {"execute": name}
            if arguments:
                message["arguments"] = arguments
            sock.sendall(json.dumps(message).encode() + b"\n")
            return self._reply(reader, allow_eof=name == "quit")
        finally:
            sock.close()

    @staticmethod
    def _read(reader) -> dict:
        line = reader.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)

    def _reply(self, reader, allow_eof: bool = False) -> Any:
        while True:
            try:
                msg = self._read(reader)
            except EOFError:
                if allow_eof:
                    return None
                raise
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise GuestError(f"QMP error: {msg['error'].get('desc', msg['error'])}")
            # an asynchronous event: skip it


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Guest:
    """One QEMU guest. See the module docstring."""

    def __init__(
        self,
        name: str | None = None,
        topology: str | Topology = "default",
        memory_mib: int | None = None,
        image: str | os.PathLike | None = None,
        accel: str | None = None,
        detach: bool = False,
        boot_timeout: float | None = None,
        disk: str | os.PathLike | None = None,
        disk_format: str = "qcow2",
        kernel: str | None = None,
        initrd: str | None = None,
        append: str | None = None,
        extra_args: Sequence[str] = (),
        firmware: str = "bios",
    ):
        global _counter
        if name is None:
            _counter += 1
            name = f"t{os.getpid()}-{_counter}"
        self.name = validate_name(name)
        if isinstance(topology, str):
            from hosttune_testbed.topologies import get_topology

            topology = get_topology(topology)
        if memory_mib:
            topology = topology.with_memory(int(memory_mib))
        self.topology = topology.validate()
        self.image = Path(image) if image else None
        self.accel = resolve_accel(accel)
        self.detach = detach
        self._boot_timeout = boot_timeout
        self.disk = Path(disk) if disk else None
        self.disk_format = disk_format
        self.kernel, self.initrd, self.append = kernel, initrd, append
        self.extra_args = list(extra_args)
        if firmware not in ("bios", "uefi"):
            raise TestbedError(f"unknown firmware {firmware!r} (bios or uefi)")
        self.firmware = firmware  # uefi: OVMF and the systemd-boot image variant
        self.run_dir = paths.run_root() / self.name
        self.key = paths.ssh_key()
        self.port: int | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self.boot_seconds: float | None = None
        self.used_accel: str | None = None

    # ----- files in the run directory
    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def overlay(self) -> Path:
        return self.run_dir / "overlay.qcow2"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def firmware_vars(self) -> Path:
        return self.run_dir / "OVMF_VARS.fd"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    # ----- SSH
    def ssh_argv(self, tty: bool = False) -> list[str]:
        if self.port is None:
            raise TestbedError(f"guest {self.name} is not running")
        argv = ["ssh", "-i", str(self.key), "-p", str(self.port), *SSH_OPTIONS]
        if tty:
            argv.append("-t")
        return argv + ["root@127.0.0.1"]

    @property
    def ssh_command(self) -> str:
        """A command line a person can paste to log into the guest."""
        if self.port is None:
            return ""
        return shlex.join(
            ["ssh", "-i", str(self.key), "-p", str(self.port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "root@127.0.0.1"]
        )

    def ssh(
        self,
        cmd: str | Sequence[str],
        check: bool = True,
        timeout: float | None = 600,
        input: str | None = None,  # noqa: A002 - mirrors subprocess.run
    ) -> subprocess.CompletedProcess:
        """Run `cmd` (a shell string, or an argv that is quoted for you) as root in the guest."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        try:
            proc = subprocess.run(
                self.ssh_argv() + [remote], capture_output=True, text=True, timeout=timeout,
                input=input, stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise GuestError(f"guest {self.name}: {remote!r} timed out after {timeout} s") from exc
        if check and proc.returncode != 0:
            raise GuestCommandError(
                f"guest {self.name}: {remote!r} exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}",
                proc.returncode, proc.stdout, proc.stderr,
            )
        return proc

    def _scp(self, sources: list[str], target: str, timeout: float) -> None:
        argv = ["scp", "-q", "-r", "-i", str(self.key), "-P", str(self.port), *SSH_OPTIONS,
                *sources, target]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"guest {self.name}: scp timed out after {timeout} s") from None
        if proc.returncode:
            raise GuestError(f"guest {self.name}: scp failed: {proc.stderr.strip()}")

    def put(self, local: str | os.PathLike, remote: str, timeout: float = 600) -> None:
        """Copy a local file or directory to `remote` in the guest."""
        self._scp([str(local)], f"root@127.0.0.1:{remote}", timeout)

    def get(self, remote: str, local: str | os.PathLike, timeout: float = 600) -> None:
        """Copy `remote` (file or directory) from the guest to `local`."""
        self._scp([f"root@127.0.0.1:{remote}"], str(local), timeout)

    def boot_id(self) -> str:
        return self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=60).stdout.strip()

    # ----- lifecycle
    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def start(self) -> Guest:
        """Boot and wait for SSH; one retry of the whole boot. Raises GuestError with the
        console tail when both attempts fail; nothing is left running then."""
        self._claim_run_dir()
        _live[self.name] = self
        try:
            if self.disk is None and self.image is None:
                from hosttune_testbed.image import ensure_image

                self.image = ensure_image(firmware=self.firmware)
            if self.accel == "auto":
                self._start_auto()
            else:
                self._boot_with_retry(self.accel)
            if self.topology.kernel_args:
                self._apply_kernel_args()  # reboots, which takes topology.offline CPUs offline
            elif self.topology.offline:
                offline_cpus(self, self.topology.offline)
            self._write_state("running")
        except BaseException:
            self.kill()
            raise
        if self.detach:
            _live.pop(self.name, None)
        return self

    def _claim_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with paths.file_lock(self.run_dir / ".lock"):
            if self.state_file.exists():
                try:
                    old = json.loads(self.state_file.read_text())
                except ValueError:
                    old = {}
                if _pid_alive(old.get("pid"), _marker(self.name)):
                    raise TestbedError(
                        f"guest {self.name} is already running (pid {old['pid']}, "
                        f"port {old.get('port')}); stop it with: python -m hosttune_testbed "
                        f"down --name {self.name}"
                    )
            for child in self.run_dir.iterdir():
                if child.name != ".lock" and (child.is_file() or child.is_socket()):
                    child.unlink()
            self._write_state("starting")

    def _start_auto(self) -> None:
        kvm_timeout = _env_seconds("HOSTTUNE_TESTBED_KVM_TIMEOUT", 60)
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            try:
                self._boot_once("kvm", kvm_timeout)
                return
            except GuestError as exc:
                first = str(exc).splitlines()[0]
                say(f"{self.name}: KVM boot failed ({first}); falling back to TCG")
                self._stop_qemu(graceful=False)
        else:
            say(f"{self.name}: /dev/kvm not usable; using TCG")
        self._boot_with_retry("tcg")

    def _boot_with_retry(self, accel: str) -> None:
        timeout = self._boot_timeout or boot_timeout(accel)
        try:
            self._boot_once(accel, timeout)
        except GuestError as first:
            say(f"{self.name}: boot failed, retrying once: {str(first).splitlines()[0]}")
            self._stop_qemu(graceful=False)
            for log in (self.console_log, self.qemu_log):
                if log.exists():
                    log.replace(self.run_dir / f"{log.stem}.attempt1.log")
            try:
                self._boot_once(accel, timeout)
            except GuestError as second:
                self._stop_qemu(graceful=False)
                raise GuestError(
                    f"guest {self.name} did not come up twice ({accel}, {timeout:.0f} s each): "
                    f"{str(second).splitlines()[0]}\nconsole log {self.console_log} (tail):\n"
                    f"{tail(self.console_log)}"
                ) from None

    def _prepare_disk(self) -> str:
        if self.disk is not None:
            return str(self.disk)
        if self.overlay.exists():
            self.overlay.unlink()
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
             str(Path(self.image).resolve()), str(self.overlay)],
            capture_output=True, text=True,
        )
        if proc.returncode:
            raise GuestError(f"qemu-img create overlay failed: {proc.stderr.strip()}")
        return str(self.overlay)

    def _boot_once(self, accel: str, timeout: float) -> None:
        t0 = time.monotonic()
        disk = self._prepare_disk()
        if self.firmware == "uefi":  # a fresh variable store: OVMF boots \EFI\BOOT\BOOTX64.EFI
            from hosttune_testbed.qemu import OVMF_VARS

            if not Path(OVMF_VARS).exists():
                raise TestbedError(f"{OVMF_VARS} missing: install Debian's ovmf package "
                                   f"(scripts/bootstrap does)")
            shutil.copyfile(OVMF_VARS, self.firmware_vars)
        for attempt in range(5):
            self.port = free_port(exclude=ports_in_use())
            spec = BootSpec(
                name=self.name, disk=disk, disk_format=self.disk_format, ssh_port=self.port,
                console_log=str(self.console_log), qmp_socket=str(self.qmp_socket),
                pidfile=str(self.run_dir / "qemu.pid"), accel=accel, kernel=self.kernel,
                initrd=self.initrd, append=self.append, daemonize=self.detach,
                extra=self.extra_args,
                firmware_vars=str(self.firmware_vars) if self.firmware == "uefi" else None,
            )
            argv = qemu_args(self.topology, spec)
            (self.run_dir / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
            say(f"{self.name}: starting QEMU ({accel}, {self.topology.cpus} vCPUs, "
                f"{self.topology.total_memory_mib} MiB, ssh port {self.port})")
            if self._launch(argv):
                break
            log = self.qemu_log.read_text(errors="replace")
            if "hostfwd" in log or "forwarding rule" in log:
                say(f"{self.name}: port {self.port} was taken, trying another")
                continue
            lines = [ln for ln in log.strip().splitlines() if "warning:" not in ln] or [log]
            raise GuestError(f"QEMU failed to start: {' | '.join(lines[-3:])[-2000:]}")
        else:
            raise GuestError("QEMU could not get a free SSH port in 5 tries")
        self.used_accel = accel
        self._write_state("booting")
        self._wait_ssh(timeout)
        self.boot_seconds = time.monotonic() - t0
        say(f"{self.name}: SSH up after {self.boot_seconds:.0f} s ({accel})")

    def _launch(self, argv: list[str]) -> bool:
        """Start QEMU; True once its main loop answers QMP, False if it exited on startup."""
        pidfile = self.run_dir / "qemu.pid"
        for stale in (pidfile, self.qmp_socket):
            if stale.exists():
                stale.unlink()
        with open(self.qemu_log, "w") as log:
            if self.detach:  # -daemonize: the parent returns once QEMU is initialised
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      timeout=120)
                if proc.returncode:
                    return False
                self._proc = None
            else:
                main = threading.current_thread() is threading.main_thread()
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    preexec_fn=_set_pdeathsig if main else None, start_new_session=True,
                )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            if pidfile.exists() and self.qmp_socket.exists():
                try:
                    self.pid = int(pidfile.read_text().strip())
                    QMP(self.qmp_socket, timeout=5).command("query-status")
                    return True
                except (OSError, ValueError, EOFError):
                    pass
            time.sleep(0.2)
        raise GuestError("QEMU did not answer on its QMP socket within 60 s")

    def _wait_ssh(self, timeout: float, not_boot_id: str | None = None) -> str:
        """Wait until `ssh true` works (and the boot_id differs from `not_boot_id`).

        `timeout` is stretched while the console log is still growing (a loaded host makes a
        TCG boot slow, not stuck), up to twice `timeout`; a silent console past it fails."""
        start = time.monotonic()
        last_size, last_growth, said = None, start, False
        while True:
            if not self.alive():
                how = ""
                if self._proc is not None and self._proc.returncode is not None:
                    code = self._proc.returncode
                    how = f" (killed by signal {-code})" if code < 0 else f" (exit status {code})"
                raise GuestError(f"QEMU exited while waiting for SSH{how}; see {self.qemu_log}")
            try:
                size = self.console_log.stat().st_size
            except OSError:
                size = 0
            now = time.monotonic()
            if last_size is not None and size != last_size:
                last_growth = now
            last_size = size
            if "Kernel panic" in tail(self.console_log, 15):
                raise GuestError("kernel panic on the console")
            try:
                proc = subprocess.run(
                    self.ssh_argv() + ["cat /proc/sys/kernel/random/boot_id"],
                    capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                )
                boot = proc.stdout.strip()
                if proc.returncode == 0 and boot and boot != not_boot_id:
                    return boot
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - start > timeout:
                quiet = now - last_growth
                if quiet > min(CONSOLE_QUIET_S, timeout / 2) or now - start > 2 * timeout:
                    raise GuestError(
                        f"timed out waiting for SSH after {now - start:.0f} s "
                        f"(console silent for {quiet:.0f} s)"
                    )
                if not said:
                    say(f"{self.name}: no SSH after {timeout:.0f} s but the console is still "
                        f"moving; waiting up to {2 * timeout:.0f} s")
                    said = True
            time.sleep(2)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return _pid_alive(self.pid, _marker(self.name))

    def reboot(self, timeout: float | None = None) -> float:
        """Reboot through the guest OS; wait for SSH and a new boot_id. Returns seconds taken.
        CPUs the topology lists as offline are taken offline again."""
        timeout = timeout or self._boot_timeout or boot_timeout(self.used_accel or self.accel)
        t0 = time.monotonic()
        old = self.boot_id()
        say(f"{self.name}: rebooting")
        try:
            self.ssh("systemctl reboot", check=False, timeout=30)
        except GuestError:
            pass
        try:
            self._wait_ssh(timeout, not_boot_id=old)
        except GuestError as exc:
            raise GuestError(
                f"guest {self.name}: reboot failed: {exc}\nconsole log {self.console_log} "
                f"(tail):\n{tail(self.console_log)}"
            ) from None
        if self.topology.offline:
            offline_cpus(self, self.topology.offline)
        took = time.monotonic() - t0
        say(f"{self.name}: back after reboot in {took:.0f} s")
        return took

    def _apply_kernel_args(self) -> None:
        args = self.topology.kernel_args
        say(f"{self.name}: adding kernel args {args!r} (GRUB drop-in, reboot)")
        line = f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT {args}"'
        self.ssh(
            f"mkdir -p /etc/default/grub.d && printf '%s\\n' {shlex.quote(line)} "
            f"> {KERNEL_ARGS_DROPIN} && update-grub 2>&1",
            timeout=300,
        )
        self.reboot()
        cmdline = self.ssh("cat /proc/cmdline").stdout
        missing = [a for a in args.split() if a not in cmdline.split()]
        if missing:
            raise GuestError(f"kernel args {missing} not in /proc/cmdline after reboot: {cmdline}")

    def shutdown(self, timeout: float = 90) -> None:
        """ACPI power-down through QMP; kill QEMU if it has not exited after `timeout` s.
        Deletes the overlay (the console log stays in the run directory)."""
        if self.alive():
            say(f"{self.name}: shutting down")
        self._stop_qemu(graceful=True, timeout=timeout)
        self._cleanup()

    def kill(self) -> None:
        """Stop QEMU at once (no guest shutdown); deletes the overlay."""
        self._stop_qemu(graceful=False)
        self._cleanup()

    def _stop_qemu(self, graceful: bool, timeout: float = 90) -> None:
        if graceful and self.alive():
            deadline = time.monotonic() + timeout
            try:
                QMP(self.qmp_socket).command("system_powerdown")
            except (OSError, EOFError, GuestError, ValueError):
                pass
            acpi_deadline = time.monotonic() + min(timeout / 2, 60)
            while self.alive() and time.monotonic() < acpi_deadline:
                time.sleep(0.5)
            if self.alive() and self.port:  # ACPI ignored (guest still booting?): ask the OS
                try:
                    self.ssh("systemctl poweroff", check=False, timeout=20)
                except GuestError:
                    pass
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.5)
        if self.alive():
            try:
                QMP(self.qmp_socket, timeout=5).command("quit")
            except (OSError, EOFError, GuestError, ValueError):
                pass
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                break
            try:
                os.kill(self._proc.pid if self._proc else self.pid, sig)
            except (ProcessLookupError, TypeError):
                break
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _cleanup(self) -> None:
        _live.pop(self.name, None)
        if self.disk is None and self.overlay.exists():
            self.overlay.unlink()
        if self.qmp_socket.exists():
            self.qmp_socket.unlink()
        if self.run_dir.exists():
            self._write_state("stopped")

    # ----- state shared with other processes
    def _write_state(self, status: str) -> None:
        state = {
            "name": self.name,
            "status": status,
            "pid": self.pid,
            "port": self.port,
            "key": str(self.key),
            "ssh_command": self.ssh_command,
            "overlay": str(self.overlay) if self.disk is None else None,
            "disk": str(self.disk) if self.disk else None,
            "image": str(self.image) if self.image else None,
            "console_log": str(self.console_log),
            "qmp_socket": str(self.qmp_socket),
            "run_dir": str(self.run_dir),
            "accel": self.used_accel or self.accel,
            "topology": self.topology.to_dict(),
            "firmware": self.firmware,
            "boot_seconds": round(self.boot_seconds, 1) if self.boot_seconds else None,
            "detached": self.detach,
            "owner_pid": os.getpid(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    @classmethod
    def attach(cls, name: str) -> Guest:
        """The running guest `name`, started by any process (raises TestbedError if none)."""
        validate_name(name)
        state_file = paths.run_root() / name / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            raise TestbedError(f"no guest named {name!r} (no {state_file})") from None
        if not _pid_alive(state.get("pid"), _marker(name)):
            raise TestbedError(f"guest {name!r} is not running (status: {state.get('status')})")
        guest = cls.__new__(cls)
        guest.name = name
        guest.topology = Topology.from_dict(state["topology"], name=state["topology"]["name"])
        guest.image = Path(state["image"]) if state.get("image") else None
        guest.accel = state.get("accel", "tcg")
        guest.used_accel = guest.accel
        guest.detach = True  # never killed by this process's exit
        guest._boot_timeout = None
        guest.disk = Path(state["disk"]) if state.get("disk") else None
        guest.disk_format = "qcow2"
        guest.kernel = guest.initrd = guest.append = None
        guest.extra_args = []
        guest.firmware = state.get("firmware", "bios")
        guest.run_dir = paths.run_root() / name
        guest.key = Path(state["key"])
        guest.port = int(state["port"])
        guest.pid = int(state["pid"])
        guest._proc = None
        guest.boot_seconds = state.get("boot_seconds")
        return guest

    def __repr__(self) -> str:
        return f"Guest({self.name!r}, {self.topology.name}, port={self.port}, pid={self.pid})"


def offline_cpus(guest: Guest, cpus: Sequence[int]) -> None:
    """Take `cpus` offline in the guest (echo 0 > /sys/devices/system/cpu/cpuN/online).

    CPU 0 has no `online` file unless the kernel was booted with `cpu0_hotplug` (Debian's 6.1
    kernel is built without CONFIG_BOOTPARAM_HOTPLUG_CPU0) and the CPU vendor is Intel (the
    kernel allows CPU 0 hotplug on Intel only); the `offline` topology sets both."""
    set_cpus_online(guest, cpus, online=False)


def online_cpus(guest: Guest, cpus: Sequence[int]) -> None:
    set_cpus_online(guest, cpus, online=True)


def set_cpus_online(guest: Guest, cpus: Sequence[int], online: bool) -> None:
    value = 1 if online else 0
    script = []
    for cpu in cpus:
        path = f"/sys/devices/system/cpu/cpu{int(cpu)}/online"
        script.append(
            f"if [ ! -e {path} ]; then echo 'CPU {cpu}: no {path} (CPU 0 needs cpu0_hotplug on "
            f"the kernel line and an Intel CPU vendor)' >&2; exit 3; fi; "
            f"echo {value} > {path} || exit 4"
        )
    guest.ssh("; ".join(script), timeout=120)
    say(f"{guest.name}: CPUs {cpulist.format(cpus)} {'online' if online else 'offline'}")


@atexit.register
def _kill_leftovers() -> None:
    for guest in list(_live.values()):
        if not guest.detach:
            try:
                guest.kill()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
