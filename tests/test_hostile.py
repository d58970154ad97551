"""Issue 13: hostile and broken input, one named regression test per reproduced case that lands
in the policy grammar, cpulist bounds, HostFS (roots, tarballs, symlinks, FIFOs) and the state
file. Through the real CLI where the case was reproduced that way."""

import io
import json
import os
import tarfile

import pytest

from hosttune import state
from hosttune.errors import HosttuneError
from hosttune.sysfs import MAX_READ, HostFS
from tests.conftest import run_cli


def one_line_error(proc, *needles):
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr}"
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING ")]
    assert len(lines) == 1 and lines[0].startswith("hosttune: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_policy(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return str(path)


# -- case 1: injection into files other programs parse ---------------------------------------------
def test_kernel_arg_shell_injection_is_refused(tree, tmp_path):
    pwned = tmp_path / "PWNED"
    pol = write_policy(tmp_path, 'isolation: {extra_kernel_args: ["$(touch${IFS}%s)", "`id`", "a\\\\b"]}\n' % pwned)
    for command in (["plan"], ["apply", "--only", "kernel_args"]):
        proc = run_cli(*command, "--root", tree, "--policy", pol)
        one_line_error(proc, "isolation.extra_kernel_args", "$(touch")
    assert not os.path.exists(os.path.join(tree, "etc/default/grub.d/hosttune.cfg")) and not pwned.exists()


def test_sysctl_value_with_newline_is_refused(tree, tmp_path):
    pol = write_policy(tmp_path, 'sysctls: {vm.swappiness: "10\\nkernel.core_pattern = |/tmp/evil"}\n')
    one_line_error(run_cli("apply", "--root", tree, "--policy", pol, "--only", "sysctls"), "sysctls.vm.swappiness")
    assert not os.path.exists(os.path.join(tree, "etc/sysctl.d/90-hosttune.conf"))


def test_sysctl_name_with_nul_is_refused(tree, tmp_path):
    pol = write_policy(tmp_path, 'sysctls: {"vm.swap\\0piness": 1}\n')
    one_line_error(run_cli("plan", "--root", tree, "--policy", pol), "sysctls.'vm.swap\\x00piness'")


@pytest.mark.parametrize("bind", ["0.0.0.0; rm -rf /", "localhost", "1.2.3.4\n"])
def test_instances_bind_must_be_an_ip_address(tree, tmp_path, bind):
    pol = write_policy(tmp_path, f"instances: {{bind: {json.dumps(bind)}}}\n")
    one_line_error(run_cli("plan", "--root", tree, "--policy", pol), "instances.bind")


# -- case 2: unbounded memory --------------------------------------------------------------------
@pytest.mark.parametrize("field", ["housekeeping", "isolation"])
def test_huge_cpulist_is_one_error(tree, tmp_path, field):
    pol = write_policy(tmp_path, f'{field}: {{cpus: "0-100000000000"}}\n')
    one_line_error(run_cli("plan", "--root", tree, "--policy", pol), f"{field}.cpus", "up to 65535")


def test_yaml_alias_bomb_is_refused(tree, tmp_path):
    lines = ['a0: &a0 ["' + "x" * 64 + '"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]" for i in range(1, 8)]
    lines.append("sysctls: {vm.swappiness: *a7}")
    proc = run_cli("plan", "--root", tree, "--policy", write_policy(tmp_path, "\n".join(lines) + "\n"))
    assert len(one_line_error(proc, "aliases")) < 300


def test_gzip_bomb_root_is_refused_without_memory(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    _zero_tarball(bomb, {"proc/cmdline": 300 << 20})  # about 300 KB compressed
    assert bomb.stat().st_size < 2 << 20
    proc = run_cli("topology", "--root", str(bomb))
    one_line_error(proc, str(bomb), "MiB")


def test_large_tarball_member_is_cut_at_the_read_cap(tmp_path):
    big = tmp_path / "big.tar.gz"
    _zero_tarball(big, {"proc/interrupts": 50 << 20, "sys/devices/system/cpu/online": 2})
    fs = HostFS.open(str(big))
    assert len(fs.read_bytes("/proc/interrupts")) == MAX_READ
    assert fs.read("/sys/devices/system/cpu/online") == "\0\0"


def _zero_tarball(path, members):
    """A tarball of members full of zero bytes, streamed (never held whole in memory)."""
    class Zeros(io.RawIOBase):
        def __init__(self, size):
            self.left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            archive.addfile(info, io.BufferedReader(Zeros(size)))


# -- case 3: reads and writes escaping --root ---------------------------------------------------
def test_state_path_with_dotdot_is_refused_by_restore(tree, tmp_path):
    outside = tmp_path / "X"
    rel = os.path.relpath(outside, tree)  # ../X
    _write_state(tree, {"originals": {"k": {"kind": "file", "path": f"/{rel}", "value": "owned\n"}}})
    proc = run_cli("restore", "--root", tree)
    one_line_error(proc, "originals['k'].path", "leaves the root", "move the file away")
    assert not outside.exists()
    # the journal of a killed apply is checked the same way (recover runs first in apply)
    _write_state(tree, {"originals": {}, "run": {"changes": [{"kind": "sysfs", "path": f"/{rel}", "value": "1"}]}})
    one_line_error(run_cli("restore", "--root", tree), "run.changes[0].path")
    assert not outside.exists()


def test_write_does_not_follow_a_symlink_out_of_the_root(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("5\n")
    target = os.path.join(tree, "proc/sys/vm/swappiness")
    os.unlink(target)
    os.symlink(outside, target)
    proc = run_cli("apply", "--root", tree, "--only", "sysctls")
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1), proc.stderr
    assert outside.read_text() == "5\n"
    fs = HostFS(tree)
    with pytest.raises(OSError) as info:
        fs.write("/proc/sys/vm/swappiness", "10")
    assert "out of the root" in info.value.strerror and outside.read_text() == "5\n"


def test_symlinked_directory_out_of_the_root_is_refused(tree, tmp_path):
    outside = tmp_path / "etc-outside"
    outside.mkdir()
    (outside / "keep.conf").write_text("mine\n")
    sysctl_d = os.path.join(tree, "etc/sysctl.d")
    os.makedirs(os.path.dirname(sysctl_d), exist_ok=True)
    if os.path.isdir(sysctl_d):
        os.rename(sysctl_d, sysctl_d + ".orig")
    os.symlink(outside, sysctl_d)
    fs = HostFS(tree)
    for action in (lambda: fs.write_file_atomic("/etc/sysctl.d/90-hosttune.conf", b"x\n"),
                   lambda: fs.remove("/etc/sysctl.d/keep.conf"),
                   lambda: fs.write("/etc/sysctl.d/keep.conf", "owned")):
        with pytest.raises(OSError):
            action()
    assert fs.read("/etc/sysctl.d/keep.conf") is None and fs.listdir("/etc/sysctl.d") is None
    assert sorted(os.listdir(outside)) == ["keep.conf"] and (outside / "keep.conf").read_text() == "mine\n"


def test_capture_does_not_follow_a_symlink_out_of_the_root(tree, tmp_path):
    cmdline = os.path.join(tree, "proc/cmdline")
    os.unlink(cmdline)
    os.symlink("/proc/self/environ", cmdline)
    out = tmp_path / "c.tar.gz"
    proc = run_cli("capture", "--root", tree, "-o", str(out), env={**os.environ, "HOSTTUNE_SECRET": "hunter2"})
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(out) as archive:
        packed = b"".join(archive.extractfile(m).read() for m in archive.getmembers() if m.isfile())
    assert b"hunter2" not in packed and b"HOSTTUNE_SECRET" not in packed


def test_fifo_in_the_root_does_not_hang(tree):
    for path in ("proc/cmdline", "sys/devices/system/cpu/isolated"):
        os.unlink(os.path.join(tree, path))
        os.mkfifo(os.path.join(tree, path))
    proc = run_cli("topology", "--root", tree)  # hung for good before (run_cli times out at 120 s)
    assert proc.returncode == 0 and "not a regular file" in proc.stderr, proc.stderr


def test_symlinks_inside_the_root_keep_working(tree):
    # like /sys/devices/system/cpu/cpuN/cpufreq -> ../cpufreq/policyN on every real host
    base = os.path.join(tree, "sys/devices/system/cpu")
    os.makedirs(os.path.join(base, "linked"), exist_ok=True)
    os.symlink("../cpufreq", os.path.join(base, "linked/cpufreq"))
    os.symlink("online", os.path.join(base, "online-link"))
    fs = HostFS(tree)
    assert fs.listdir("/sys/devices/system/cpu/linked/cpufreq") == fs.listdir("/sys/devices/system/cpu/cpufreq")
    assert fs.read("/sys/devices/system/cpu/online-link") == fs.read("/sys/devices/system/cpu/online") is not None
    live = HostFS("/")
    assert live.read("/proc/self/status") is not None  # /proc/self is a symlink under the live root


@pytest.mark.parametrize("path", ["/../etc/shadow", "/proc/../../x", "..", "/a/\0b", ""])
def test_dotdot_paths_are_refused_everywhere(tree, path):
    fs = HostFS(tree)
    for call in (fs.check_path, fs.read, fs.read_bytes, fs.stat_file, fs.exists, fs.remove,
                 lambda p: fs.write(p, "1"), lambda p: fs.write_file_atomic(p, "x")):
        with pytest.raises(HosttuneError):
            call(path)


# -- case 4: byte-exact primitives (restore itself is the lead's engine) --------------------------
def test_write_file_atomic_keeps_bytes_mode_and_owner(tree):
    fs = HostFS(tree)
    content = b"# caf\xe9\nGRUB_X=1\n\n\n"
    fs.write_file_atomic("/etc/default/irqbalance", content, mode=0o640, uid=0, gid=1)
    assert fs.read_bytes("/etc/default/irqbalance") == content
    assert fs.stat_file("/etc/default/irqbalance") == (0o640, 0, 1)
    fs.write_file_atomic("/etc/default/no-newline", "x=1")  # the old signature: str, mode 0o644
    assert fs.read_bytes("/etc/default/no-newline") == b"x=1"
    assert fs.stat_file("/etc/default/no-newline")[0] == 0o644
    assert fs.read_bytes("/etc/default/missing") is None and fs.stat_file("/etc/default/missing") is None


# -- case 5: one line instead of a traceback ----------------------------------------------------
def test_truncated_and_empty_tarballs_are_one_line(tmp_path, tree):
    capture = tmp_path / "c.tar.gz"
    run_cli("capture", "--root", tree, "-o", str(capture), check=0)
    data = capture.read_bytes()
    for name, cut in (("truncated", data[: len(data) // 2]), ("trailer", data[:-5]), ("empty", b"")):
        path = tmp_path / f"{name}.tar.gz"
        path.write_bytes(cut)
        one_line_error(run_cli("topology", "--root", str(path)), str(path), "not a readable capture tarball")


def test_non_utf8_and_binary_policy_are_one_line(tree, tmp_path):
    for data in (b"profile: lat\xe9ncy\n", bytes(range(256))):
        path = tmp_path / "p.yaml"
        path.write_bytes(data)
        one_line_error(run_cli("plan", "--root", tree, "--policy", str(path)), str(path), "not UTF-8")


def test_policy_5_beside_agent_is_one_line(tree, tmp_path):
    pol = write_policy(tmp_path, "policy: 5\nagent: {interval: 5}\n")
    one_line_error(run_cli("plan", "--root", tree, "--policy", pol), "policy: must be a mapping, got int")


def test_deep_yaml_nesting_is_one_line(tree, tmp_path):
    pol = write_policy(tmp_path, "sysctls: " + "[" * 20000 + "]" * 20000 + "\n")
    one_line_error(run_cli("plan", "--root", tree, "--policy", pol), "not valid YAML")


def _write_state(tree, fields):
    path = os.path.join(tree, state.STATE_FILE.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"schema": state.SCHEMA, "originals": {}, "run": None, "extras": {}, **fields}, handle)
    return path


@pytest.mark.parametrize("fields,field", [
    ({"run": "x"}, "run must be a mapping"),
    ({"run": {"changes": [{"path": "/proc/sys/vm/swappiness", "value": "1"}]}}, "run.changes[0].kind"),
    ({"originals": {"k": {"path": "/proc/sys/vm/swappiness", "value": "1"}}}, "originals['k'].kind"),
    ({"extras": {"immovable_irqs": 5}}, "extras.immovable_irqs"),
    ({"extras": {"refused": ["/proc/irq/30/smp_affinity_list"]}}, "extras.refused"),
    ({"extras": {"refused": {"/proc/irq/30/smp_affinity_list": 5}}}, "extras.refused"),
    ({"originals": {"k": {"kind": "sysfs", "path": 5, "value": "1"}}}, "originals['k'].path"),
    ({"originals": {"k": {"kind": "sysfs", "path": "/proc/sys/vm/swappiness", "value": 10}}}, "originals['k'].value"),
    ({"originals": {"k": {"kind": "file", "path": "/etc/x", "value": "a", "data": "!!"}}}, "originals['k'].data"),
    ({"originals": {"k": {"kind": "file", "path": "/etc/x", "value": "a", "mode": "0644"}}}, "originals['k'].mode"),
    ({"originals": {"k": {"kind": "service", "path": "systemd:irqbalance", "service": "--now"}}}, "originals['k'].service"),
    ({"originals": {"k": {"kind": "grubby", "path": "grubby:ALL", "entries": {"/boot/vmlinuz": {"added": "x"}}}}},
     "originals['k'].entries"),
    ({"originals": {"k": {"kind": "service", "path": "/svc", "service": "--root=/"}}}, "originals['k'].service"),
    ({"originals": []}, "originals must be a mapping"),
])
def test_malformed_state_is_one_line_and_recoverable(tree, fields, field):
    path = _write_state(tree, fields)
    for command in ("restore", "verify", "apply"):
        one_line_error(run_cli(command, "--root", tree), "malformed state file", field, "move the file away")
    os.rename(path, path + ".bad")  # what the message says: then restore works again
    assert run_cli("restore", "--root", tree).returncode == 0


@pytest.mark.parametrize("text", ["[" * 100000, '{"schema": "hosttune.state/1", "originals": {}, "run": ' + "9" * 5000 + "}",
                                  b"\xff\xfe{}"])
def test_corrupt_state_is_one_line(tree, text):
    path = _write_state(tree, {})
    with open(path, "wb") as handle:
        handle.write(text if isinstance(text, bytes) else text.encode())
    one_line_error(run_cli("restore", "--root", tree), "state file is corrupt", "move the file away")


def test_state_file_size_is_capped(tree, monkeypatch):
    path = _write_state(tree, {"extras": {"pad": "x" * 5000}})
    monkeypatch.setattr(state, "MAX_STATE_BYTES", 4096)
    with pytest.raises(HosttuneError, match="larger than"):
        state.load(HostFS(tree))
    os.unlink(path)
    os.mkfifo(path)  # not a regular file: an error, never an empty state that would lose originals
    with pytest.raises(HosttuneError, match="cannot be read"):
        state.load(HostFS(tree))
