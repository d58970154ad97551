"""The QEMU guest testbed (hosttune_testbed).

Fast tests (no boot): the QEMU command line built from a topology, topology validation, port
allocation, recipe hashing, apt source parsing, QMP client, CLI error handling.

Guest tests (`-m guest`, boot QEMU under TCG; ~1.5-2 min per boot on 2 host cores): one module-
scoped guest per topology, several assertions each. HOSTTUNE_TESTBED_EXTRA=1 adds the
memoryless, sparse and offline topologies (three more boots; otherwise they are not collected).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from hosttune_testbed import cli as tb_cli
from hosttune_testbed import image as tb_image
from hosttune_testbed import vm as tb_vm
from hosttune_testbed.errors import TestbedError
from hosttune_testbed.qemu import (
    DEFAULT_CPU_MODEL,
    SMT_CPU_MODEL,
    BootSpec,
    NumaNode,
    Topology,
    numa_args,
    qemu_args,
    resolve_accel,
    smp_arg,
    tcg_thread_mode,
)
from hosttune_testbed.topologies import TOPOLOGIES, get_topology
from hosttune_testbed.util import clean_console

REPO = Path(__file__).resolve().parent.parent


def _opt_values(argv: list[str], opt: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == opt]


def _spec(**kw) -> BootSpec:
    return BootSpec(name="t", disk="/x/overlay.qcow2", ssh_port=40022, console_log="/x/c.log",
                    qmp_socket="/x/q.sock", pidfile="/x/q.pid", **kw)


# ---------------------------------------------------------------- QEMU command line (pure)


def test_default_topology_command_line():
    argv = qemu_args(get_topology("default"), _spec())
    assert _opt_values(argv, "-smp") == ["8,sockets=2,cores=4,threads=1"]
    assert _opt_values(argv, "-m") == ["2048M"]
    assert _opt_values(argv, "-object") == [
        "memory-backend-ram,id=mem0,size=1024M",
        "memory-backend-ram,id=mem1,size=1024M",
    ]
    assert _opt_values(argv, "-numa") == [
        "node,nodeid=0,cpus=0-3,memdev=mem0",
        "node,nodeid=1,cpus=4-7,memdev=mem1",
    ]
    assert _opt_values(argv, "-accel") == [f"tcg,thread={tcg_thread_mode(8)}"]
    assert _opt_values(argv, "-cpu") == [DEFAULT_CPU_MODEL]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in _opt_values(argv, "-netdev")[0]
    assert _opt_values(argv, "-serial") == ["file:/x/c.log"]
    assert _opt_values(argv, "-qmp") == ["unix:/x/q.sock,server=on,wait=off"]
    assert _opt_values(argv, "-pidfile") == ["/x/q.pid"]
    assert "-kernel" not in argv  # guests boot through GRUB from the disk


def test_smt_topology_uses_smt_cpu_model_and_dies():
    topo = get_topology("smt4n")
    assert topo.cpus == 16 and topo.threads == 2 and len(topo.nodes) == 4
    argv = qemu_args(topo, _spec())
    assert _opt_values(argv, "-cpu") == [SMT_CPU_MODEL]
    assert _opt_values(argv, "-smp") == ["16,sockets=2,dies=2,cores=2,threads=2"]
    assert len(_opt_values(argv, "-numa")) == 4


def test_explicit_cpu_model_wins():
    topo = Topology(sockets=1, cores=2, threads=2, cpu_model="Skylake-Server", memory_mib=512)
    assert _opt_values(qemu_args(topo, _spec()), "-cpu") == ["Skylake-Server"]


def test_memoryless_node_has_no_memdev():
    topo = get_topology("memoryless")
    args = numa_args(topo)
    assert _opt_values(args, "-numa")[2] == "node,nodeid=2,cpus=4-5"
    assert len(_opt_values(args, "-object")) == 2
    assert topo.total_memory_mib == 2048


def test_sparse_node_repeats_cpus():
    nodes = _opt_values(numa_args(get_topology("sparse")), "-numa")
    assert nodes == ["node,nodeid=0,cpus=0-1,cpus=4-5,memdev=mem0",
                     "node,nodeid=1,cpus=2-3,cpus=6-7,memdev=mem1"]


def test_no_numa_nodes_means_plain_memory():
    topo = Topology(sockets=1, cores=2, memory_mib=768)
    argv = qemu_args(topo, _spec())
    assert "-numa" not in argv and _opt_values(argv, "-m") == ["768M"]
    assert smp_arg(topo) == "2,sockets=1,cores=2,threads=1"


def test_direct_kernel_and_daemonize():
    argv = qemu_args(get_topology("default"),
                     _spec(kernel="/k", initrd="/i", append="root=/dev/vda1", daemonize=True,
                           accel="kvm"))
    assert _opt_values(argv, "-kernel") == ["/k"] and _opt_values(argv, "-initrd") == ["/i"]
    assert _opt_values(argv, "-append") == ["root=/dev/vda1"]
    assert "-daemonize" in argv and _opt_values(argv, "-accel") == ["kvm"]


def test_all_named_topologies_are_valid():
    for name in TOPOLOGIES:
        topo = get_topology(name)
        covered = sorted(c for n in topo.nodes for c in n.cpus)
        assert covered == list(range(topo.cpus)), name
        qemu_args(topo, _spec())


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sockets": 1, "cores": 2, "nodes": [{"cpus": "0-1", "memory_mib": 0}]}, "needs memory"),
        ({"sockets": 1, "cores": 2, "nodes": [{"cpus": "0", "memory_mib": 512}]}, "in no NUMA"),
        ({"sockets": 1, "cores": 2, "nodes": [{"cpus": "0-1", "memory_mib": 512},
                                              {"cpus": "1", "memory_mib": 512}]}, "node 0 and"),
        ({"sockets": 1, "cores": 2, "nodes": [{"cpus": "0-2", "memory_mib": 512}]}, "CPU 2"),
        ({"sockets": 1, "cores": 2, "offline": "0-1", "memory_mib": 512}, "every CPU"),
        ({"sockets": 1, "cores": 2, "bogus": 1}, "unknown keys"),
        ({"sockets": 0, "cores": 2}, "sockets must be"),
    ],
)
def test_invalid_topologies(data, message):
    with pytest.raises(TestbedError, match=message):
        Topology.from_dict(data, name="bad")


def test_unknown_topology_name_lists_known_ones():
    with pytest.raises(TestbedError, match="known: default"):
        get_topology("nope")


def test_with_memory_spreads_over_memory_nodes():
    topo = get_topology("memoryless").with_memory(3001)
    assert [n.memory_mib for n in topo.nodes] == [1500, 1501, 0]
    assert get_topology("default").with_memory(4096).total_memory_mib == 4096


def test_topology_dict_round_trip():
    for name in TOPOLOGIES:
        topo = get_topology(name)
        assert Topology.from_dict(topo.to_dict(), name=name) == topo


def test_resolve_accel(monkeypatch):
    monkeypatch.delenv("HOSTTUNE_TESTBED_ACCEL", raising=False)
    assert resolve_accel() == "tcg"
    monkeypatch.setenv("HOSTTUNE_TESTBED_ACCEL", "AUTO")
    assert resolve_accel() == "auto"
    monkeypatch.setenv("HOSTTUNE_TESTBED_ACCEL", "xen")
    with pytest.raises(TestbedError, match="HOSTTUNE_TESTBED_ACCEL"):
        resolve_accel()


def test_tcg_thread_mode(monkeypatch):
    monkeypatch.delenv("HOSTTUNE_TESTBED_TCG_THREAD", raising=False)
    assert tcg_thread_mode(16, host_cpus=2) == "single"  # fewer host CPUs than vCPUs
    assert tcg_thread_mode(8, host_cpus=8) == "multi"
    monkeypatch.setenv("HOSTTUNE_TESTBED_TCG_THREAD", "multi")
    assert tcg_thread_mode(16, host_cpus=2) == "multi"
    monkeypatch.setenv("HOSTTUNE_TESTBED_TCG_THREAD", "many")
    with pytest.raises(TestbedError, match="HOSTTUNE_TESTBED_TCG_THREAD"):
        tcg_thread_mode(8)


# ---------------------------------------------------------------- ports, names, QMP, state


def test_free_port_is_bindable_and_skips_excluded():
    port = tb_vm.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    other = tb_vm.free_port(exclude=[port])
    assert other != port and 1024 <= other <= 65535


def test_guest_names():
    assert tb_vm.validate_name("mol-default_1.x") == "mol-default_1.x"
    for bad in ("", "a b", "../x", "-x", "x" * 64):
        with pytest.raises(TestbedError):
            tb_vm.validate_name(bad)


def test_qmp_client_skips_events(tmp_path):
    path = str(tmp_path / "q.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    seen = []

    def serve():
        conn, _ = server.accept()
        with conn, conn.makefile("rw") as f:
            f.write('{"QMP": {"version": {}}}\n')
            f.flush()
            seen.append(json.loads(f.readline()))
            f.write('{"return": {}}\n')
            f.flush()
            seen.append(json.loads(f.readline()))
            f.write('{"event": "POWERDOWN", "timestamp": {}}\n{"return": {"status": "running"}}\n')
            f.flush()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert tb_vm.QMP(path).command("query-status") == {"status": "running"}
    finally:
        thread.join(5)
        server.close()
    assert seen == [{"execute": "qmp_capabilities"}, {"execute": "query-status"}]


@pytest.fixture
def run_root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTTUNE_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("HOSTTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "run"


def test_attach_refuses_dead_guest(run_root):
    state_dir = run_root / "ghost"
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_text(json.dumps(
        {"name": "ghost", "pid": 2**22 + 7, "port": 1, "status": "running",
         "topology": get_topology("default").to_dict(), "key": "/nonexistent"}))
    with pytest.raises(TestbedError, match="not running"):
        tb_vm.Guest.attach("ghost")
    assert [s["running"] for s in tb_vm.list_states()] == [False]
    with pytest.raises(TestbedError, match="no guest named"):
        tb_vm.Guest.attach("nobody")


# ---------------------------------------------------------------- image recipe


def test_recipe_hash_is_stable_and_sensitive():
    rec = tb_image.recipe()
    h = tb_image.recipe_hash(rec, "ssh-ed25519 AAAA k")
    assert len(h) == 16 and int(h, 16) >= 0
    assert h == tb_image.recipe_hash(tb_image.recipe(), "ssh-ed25519 AAAA k  \n")
    assert h != tb_image.recipe_hash(rec, "ssh-ed25519 BBBB k")
    changed = dict(rec, packages=rec["packages"] + ["stress-ng"])
    assert h != tb_image.recipe_hash(changed, "ssh-ed25519 AAAA k")
    files = dict(rec["files"], **{"/etc/hostname": "other\n"})
    assert h != tb_image.recipe_hash(dict(rec, files=files), "ssh-ed25519 AAAA k")


def test_recipe_content():
    rec = tb_image.recipe()
    for pkg in ("systemd-sysv", "openssh-server", "python3", "ifupdown", "isc-dhcp-client"):
        assert pkg in rec["include"]
    for pkg in ("linux-image-amd64", "grub-pc-bin", "grub2-common", "irqbalance",
                "linux-cpupower", "numactl", "python3-venv", "sudo"):
        assert pkg in rec["packages"]
    assert rec["download_only"] == ["docker.io"]
    grub = rec["files"]["/etc/default/grub"]
    assert "GRUB_TIMEOUT=1" in grub and 'GRUB_TERMINAL="serial console"' in grub
    assert "console=ttyS0" in grub and "net.ifnames=0" in grub
    assert "Keep-Downloaded-Packages" in rec["files"]["/etc/apt/apt.conf.d/10hosttune-keep-debs"]
    assert "PermitRootLogin prohibit-password" in \
        rec["files"]["/etc/ssh/sshd_config.d/10-hosttune-testbed.conf"]
    assert "grub-install --target=i386-pc /dev/vda" in rec["first_boot_script"]


def test_parse_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm "
        "bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/"
        "debian-security\nSuites: bookworm-security\nComponents: main\n")
    assert tb_image._parse_sources(tmp_path) == (
        "http://mirror.example/debian", "http://mirror.example/debian-security")
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://m2.example/debian bookworm main\n"
        "#deb http://nope.example/debian bookworm main\n"
        "deb http://m2.example/debian-security bookworm-security main\n")
    assert tb_image._parse_sources(tmp_path) == (
        "http://m2.example/debian", "http://m2.example/debian-security")


def test_clean_console_strips_escapes():
    assert clean_console("\x1b[2J\x1b[1;1HGRUB\r\nlogin: \x1b[0m\x00") == "GRUB\nlogin: "


# ---------------------------------------------------------------- CLI


def run_cli(argv, capsys):
    rc = tb_cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_unknown_topology_exits_2(run_root, capsys):
    rc, out, err = run_cli(["up", "--name", "x", "--topology", "nope"], capsys)
    assert rc == 2 and "unknown topology 'nope'" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_cli_guest_not_running(run_root, capsys):
    for argv in (["down", "--name", "x"], ["ssh", "--name", "x", "--", "true"],
                 ["console", "--name", "x"]):
        rc, _, err = run_cli(argv, capsys)
        assert rc == 2 and "x" in err and "Traceback" not in err, argv
    assert run_cli(["down", "--name", "x", "--missing-ok"], capsys)[0] == 0


def test_cli_list_and_topologies(run_root, capsys):
    rc, _, err = run_cli(["list"], capsys)
    assert rc == 0 and "no guests" in err
    rc, out, _ = run_cli(["topologies", "--json"], capsys)
    assert rc == 0 and {t["name"] for t in json.loads(out)} == set(TOPOLOGIES)


def test_register_adds_testbed_command():
    parser = argparse.ArgumentParser(prog="hosttune")
    tb_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["testbed", "up", "--name", "a", "--topology", "smt4n"])
    assert args.func is tb_cli.cmd_up and args.topology == "smt4n"
    for sub in ("image", "list", "topologies"):
        assert callable(parser.parse_args(["testbed", sub]).func)
    assert parser.parse_args(["testbed", "ssh", "--name", "a", "--", "uname", "-r"]).cmd == [
        "--", "uname", "-r"]


def test_hosttune_testbed_command_in_a_checkout():
    proc = subprocess.run([sys.executable, "-m", "hosttune", "testbed", "topologies", "--json"],
                          capture_output=True, text=True, cwd="/", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert {t["name"] for t in json.loads(proc.stdout)} == set(TOPOLOGIES)


# ---------------------------------------------------------------- the runtime wheel (issue 11)


@pytest.fixture(scope="module")
def runtime_wheel(tmp_path_factory) -> Path:
    """hosttune's wheel as the roles build it for hosts (roles/hosttune_agent/files/)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    proc = subprocess.run([sys.executable, str(REPO / "roles/hosttune_agent/files/build_wheelhouse.py"),
                           "--src", str(REPO), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / json.loads(proc.stdout)["hosttune_wheel"]


def test_runtime_wheel_leaves_the_testbed_out(runtime_wheel):
    with zipfile.ZipFile(runtime_wheel) as wheel:
        names = wheel.namelist()
        metadata = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "hosttune/cli.py" in names and "hosttune/data/hosttune-agent.service" in names
    assert [n for n in names if "testbed" in n] == []
    assert {n.split("/")[0] for n in names} == {"hosttune", runtime_wheel.name.split("-py3")[0]
                                                + ".dist-info"}
    # what every host installs: the extras carry serve's and converge's libraries
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["pyyaml>=6.0"]


def test_runtime_wheel_runs_without_the_testbed(runtime_wheel, tmp_path, tree):
    """The wheel's hosttune alone (no checkout, no testbed package): `testbed` is no command, the
    host commands work."""
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(runtime_wheel) as wheel:
        wheel.extractall(unpacked)
    yaml_dir = Path(__import__("yaml").__file__).parent.parent
    # -S: none of the venv's .pth files, so neither the editable hosttune nor the testbed
    code = (f"import sys; sys.path[:0] = [{str(unpacked)!r}, {str(yaml_dir)!r}]; "
            "from hosttune.cli import main; sys.exit(main(sys.argv[1:]))")

    def hosttune(*args):
        return subprocess.run([sys.executable, "-S", "-c", code, *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=60)

    proc = hosttune("testbed", "list")
    assert proc.returncode == 2 and "invalid choice: 'testbed'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = hosttune("topology", "--root", tree, "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["nodes"]) == 2


# ---------------------------------------------------------------- guests (boot QEMU)

needs_qemu = pytest.mark.skipif(
    not (shutil.which("qemu-system-x86_64") and shutil.which("debootstrap")
         and os.geteuid() == 0),
    reason="needs root, qemu-system-x86 and debootstrap (scripts/bootstrap installs them)",
)


@contextmanager
def console_on_failure(guest: tb_vm.Guest):
    """On a failed assertion, print the guest's console log tail (pytest shows it)."""
    try:
        yield
    except BaseException:
        from hosttune_testbed.util import tail

        print(f"--- console log of {guest.name} ({guest.console_log}), last 80 lines ---")
        print(tail(guest.console_log, 80))
        raise


def boot(name: str) -> tb_vm.Guest:
    guest = tb_vm.Guest(topology=name, name=f"pytest-{name}-{os.getpid()}")
    try:
        guest.start()
        return guest
    except tb_vm.GuestError as exc:  # carries the console tail already
        message = f"guest {name} did not come up: {exc}"
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="class")
def default_guest(request):
    """The `default` guest, started and stopped by the CLI in other processes (`up` leaves QEMU
    running detached, as a Molecule create playbook would use it)."""
    name = f"pytest-cli-{os.getpid()}"
    failed_before = request.session.testsfailed
    up = cli_process("up", "--name", name, "--topology", "default", "--json")
    if up.returncode != 0:
        pytest.fail(f"testbed up failed (exit {up.returncode}):\n{up.stderr[-4000:]}",
                    pytrace=False)
    state = json.loads(up.stdout)
    assert state["status"] == "running" and state["port"]
    guest = tb_vm.Guest.attach(name)
    guest.detach = False
    tb_vm._live[name] = guest  # killed at exit should the teardown below not run
    yield guest
    down = cli_process("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert not guest.alive()
    if request.session.testsfailed == failed_before:
        shutil.rmtree(guest.run_dir, ignore_errors=True)


def cli_process(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hosttune_testbed", *args], capture_output=True,
                          text=True, timeout=timeout)


def guest_nodes(guest) -> dict[str, str]:
    out = guest.ssh("cd /sys/devices/system/node && for n in node*; do "
                    "echo $n $(cat $n/cpulist); done").stdout
    return dict(line.split() for line in out.strip().splitlines())


def siblings(guest) -> dict[int, str]:
    out = guest.ssh("cd /sys/devices/system/cpu && for c in cpu[0-9]*; do "
                    "echo ${c#cpu} $(cat $c/topology/thread_siblings_list); done").stdout
    return {int(a): b for a, b in (line.split() for line in out.strip().splitlines())}


# What these guests also prove is in the Molecule scenarios (tests/test_molecule.py): the GRUB
# drop-in landing isolcpus after a reboot (default), 4 nodes with 2 threads per core (smt4n).
@needs_qemu
@pytest.mark.guest
@pytest.mark.xdist_group("testbed-default")
class TestDefaultGuest:
    """One `default` guest (2 nodes, no SMT) for these tests, driven by the testbed CLI."""

    def test_default_guest_numa_and_threads(self, default_guest):
        g = default_guest
        with console_on_failure(g):
            assert guest_nodes(g) == {"node0": "0-3", "node1": "4-7"}
            assert siblings(g) == {cpu: str(cpu) for cpu in range(8)}
            meminfo = g.ssh("cat /sys/devices/system/node/node1/meminfo").stdout
            total_kb = int(meminfo.split("MemTotal:")[1].split()[0])
            assert 800 * 1024 < total_kb <= 1024 * 1024
            assert "console=ttyS0" in g.ssh("cat /proc/cmdline").stdout
            assert g.ssh("grep -c '^' /etc/machine-id").stdout.strip() == "1"
            # the CPU model leaves ERMS out (qemu.DEFAULT_CPU_MODEL: rep stosb is slow under TCG)
            flags = g.ssh("grep -m1 '^flags' /proc/cpuinfo").stdout.split()
            assert "avx2" in flags and "erms" not in flags, flags

    def test_default_guest_files_and_tools(self, default_guest, tmp_path):
        g = default_guest
        with console_on_failure(g):
            src = tmp_path / "in.txt"
            src.write_text("hello guest\n")
            g.put(src, "/root/in.txt")
            g.get("/root/in.txt", tmp_path / "out.txt")
            assert (tmp_path / "out.txt").read_text() == "hello guest\n"
            r = g.ssh("numactl --hardware | head -1; command -v cpupower irqbalance python3",
                      check=False)
            assert r.returncode == 0 and "available: 2 nodes" in r.stdout, r.stdout + r.stderr
            debs = g.ssh("ls /var/cache/apt/archives/").stdout.split()
            assert any(d.startswith("docker.io_") for d in debs)
            state = json.loads(g.state_file.read_text())
            assert state["status"] == "running" and state["port"] == g.port
            assert g.ssh("hostname").stdout.strip() == "hosttune-guest"

    def test_cli_against_running_guest(self, default_guest):
        g = default_guest
        with console_on_failure(g):
            r = cli_process("ssh", "--name", g.name, "--", "cat", "/sys/devices/system/node/online")
            assert r.returncode == 0 and r.stdout.strip() == "0-1", r.stderr
            assert cli_process("ssh", "--name", g.name, "--", "exit 7").returncode == 7
            r = cli_process("console", "--name", g.name)
            assert r.returncode == 0 and "Debian GNU/Linux 12" in r.stdout
            r = cli_process("list", "--json")
            mine = [s for s in json.loads(r.stdout) if s["name"] == g.name]
            assert mine and mine[0]["running"] and mine[0]["topology"]["name"] == "default"
            r = cli_process("up", "--name", g.name)
            assert r.returncode == 2 and "already running" in r.stderr


@contextmanager
def extra_guest(topology: str):
    """Boot a guest for one test; keep its run directory (console log) only if the test fails."""
    g = boot(topology)
    ok = False
    try:
        with console_on_failure(g):
            yield g
        ok = True
    finally:
        g.shutdown()
        if ok:
            shutil.rmtree(g.run_dir, ignore_errors=True)


@needs_qemu
@pytest.mark.guest
def test_memoryless_node():
    with extra_guest("memoryless") as g:
        assert g.ssh("cat /sys/devices/system/node/has_cpu").stdout.strip() == "0-2"
        assert g.ssh("cat /sys/devices/system/node/has_memory").stdout.strip() == "0-1"
        assert guest_nodes(g) == {"node0": "0-1", "node1": "2-3", "node2": "4-5"}


@needs_qemu
@pytest.mark.guest
def test_sparse_cpu_lists():
    with extra_guest("sparse") as g:
        assert guest_nodes(g) == {"node0": "0-1,4-5", "node1": "2-3,6-7"}


@needs_qemu
@pytest.mark.guest
def test_offline_cpus_including_cpu0():
    with extra_guest("offline") as g:
        assert "cpu0_hotplug" in g.ssh("cat /proc/cmdline").stdout
        assert g.ssh("cat /sys/devices/system/cpu/offline").stdout.strip() == "0,5"
        assert g.ssh("cat /sys/devices/system/cpu/online").stdout.strip() == "1-4,6-7"
        tb_vm.online_cpus(g, [5])
        assert g.ssh("cat /sys/devices/system/cpu/offline").stdout.strip() == "0"


# The extra topologies cost three more boots (one with a reboot): collected only on request,
# not skipped (the suite treats a skip as a failure).
if os.environ.get("HOSTTUNE_TESTBED_EXTRA") != "1":
    del test_memoryless_node, test_sparse_cpu_lists, test_offline_cpus_including_cpu0


def test_console_log_path_is_in_run_dir(run_root):
    g = tb_vm.Guest(name="paths", topology="default", image=Path("/nonexistent.qcow2"))
    assert g.console_log == run_root / "paths" / "console.log"
    assert g.ssh_command == ""
    with pytest.raises(TestbedError, match="not running"):
        g.ssh_argv()
