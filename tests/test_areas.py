"""The area registry, and the areas whose changes go through host commands: kernel arguments
through grubby (Red Hat family) and systemd-boot's kernel-install, a service stopped and started
again. Commands are stand-ins on PATH that keep their state in files and log their argv; the
engine runs them under a test root because HOSTTUNE_RUN_COMMANDS=1."""

import json
import os
import stat
import sys
import textwrap

import pytest

from hosttune import areas, discovery, engine, plan, policy, state
from hosttune.errors import HosttuneError
from hosttune.sysfs import HostFS
from tests.conftest import run_cli

STANDIN = textwrap.dedent('''\
    #!{python}
    """Stand-in for {name}: state in $STANDIN_STATE/{name}.json, argv appended to $STANDIN_STATE/log."""
    import json, os, sys
    folder = os.environ["STANDIN_STATE"]
    with open(os.path.join(folder, "log"), "a") as log:
        log.write(json.dumps(["{name}"] + sys.argv[1:]) + "\\n")
    path = os.path.join(folder, "{name}.json")
    state = json.load(open(path)) if os.path.exists(path) else {{}}
    argv = sys.argv[1:]
    code = 0
    if "{name}" == "grubby":
        if os.environ.get("STANDIN_GRUBBY_FAIL") and any(a.startswith("--args=") for a in argv):
            print("grubby: cannot write the boot entries", file=sys.stderr); sys.exit(1)
        entries = state.setdefault("entries", [])
        if argv == ["--info=ALL"]:
            for i, e in enumerate(entries):
                print(f"index={{i}}"); print(f'kernel="{{e["kernel"]}}"'); print(f'args="{{" ".join(e["args"])}}"')
        for a in argv:
            target = next((x[len("--update-kernel="):] for x in argv if x.startswith("--update-kernel=")), "ALL")
            if a.startswith("--args="):
                new = a[len("--args="):].split()
                for e in entries:
                    if target not in ("ALL", e["kernel"]):
                        continue
                    keys = {{w.split("=", 1)[0] for w in new}}
                    e["args"] = [w for w in e["args"] if w.split("=", 1)[0] not in keys] + new
            if a.startswith("--remove-args="):
                gone = a[len("--remove-args="):].split()
                for e in entries:
                    if target not in ("ALL", e["kernel"]):
                        continue
                    e["args"] = [w for w in e["args"] if w not in gone]
    elif "{name}" == "kernel-install":
        conf = os.environ.get("KERNEL_INSTALL_CONF_ROOT")
        cmdline = open(os.path.join(conf, "cmdline")).read() if conf else None
        with open(os.path.join(folder, "log"), "a") as log:
            log.write(json.dumps(["kernel-install-conf", cmdline, sorted(os.listdir(conf)) if conf else None]) + "\\n")
    elif "{name}" == "systemctl":
        verb, names = argv[0], [a for a in argv[1:] if not a.startswith("--")]
        for n in names:
            svc = state.setdefault(n, {{"active": False, "enabled": False}})
            if verb == "is-active":
                print("active" if svc["active"] else "inactive"); code = 0 if svc["active"] else 3
            elif verb == "is-enabled":
                print("enabled" if svc["enabled"] else "disabled"); code = 0 if svc["enabled"] else 1
            elif verb == "disable":
                svc["enabled"] = False; svc["active"] = svc["active"] and "--now" not in argv
            elif verb == "enable":
                svc["enabled"] = True; svc["active"] = svc["active"] or "--now" in argv
            elif verb == "start":
                svc["active"] = True
    json.dump(state, open(path, "w"))
    sys.exit(code)
''')


@pytest.fixture
def standins(tmp_path, monkeypatch):
    """grubby, systemctl, update-grub and kernel-install stand-ins first on PATH; returns
    (state folder, function giving the logged argv lists)."""
    bindir, folder = tmp_path / "standin-bin", tmp_path / "standin"
    bindir.mkdir()
    folder.mkdir()
    for name in ("grubby", "systemctl", "update-grub", "kernel-install"):
        script = bindir / name
        script.write_text(STANDIN.format(python=sys.executable, name=name))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_STATE", str(folder))
    monkeypatch.setenv("HOSTTUNE_RUN_COMMANDS", "1")

    def log():
        path = folder / "log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return folder, log


def _plan(root, raw=None):
    return plan.make_plan(discovery.discover(HostFS.open(root)), policy.validate(raw or {}))


def _el_tree(tree, folder, entries):
    """Turn the synthetic Debian tree into a Red Hat family host booted through grubby's BLS entries."""
    os.remove(os.path.join(tree, "etc/default/grub"))
    with open(os.path.join(tree, "etc/os-release"), "w") as f:
        f.write('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n')
    open(os.path.join(tree, "usr/sbin/grubby"), "w").close()
    (folder / "grubby.json").write_text(json.dumps({"entries": entries}))


def test_registry_order_and_interface():
    names = [a.NAME for a in areas.REGISTRY]
    assert names == list(areas.NAMES) and len(set(names)) == len(names)
    # turbo before the frequency lock, governor area before EPP, IRQ pins before irqbalance, boot last
    assert names.index("turbo") < names.index("cpufreq") < names.index("epp")
    assert names.index("irqs") < names.index("irqbalance") and names[-1] == "kernel_args"
    assert names[0] == "managers"  # tuned & co. stopped before the values they rewrite
    for area in areas.REGISTRY:
        for part in ("discover", "show", "plan", "describe", "items", "refresh"):
            assert callable(getattr(area, part)), f"{area.NAME} lacks {part}"
    assert areas.RUNTIME == tuple(n for n in names if n != "kernel_args")


def test_red_hat_kernel_args_through_grubby_and_back_exactly(tree, standins):
    folder, log = standins
    original = [{"kernel": "/boot/vmlinuz-5.14.0-427", "args": ["ro", "crashkernel=auto", "isolcpus=7", "quiet"]},
                {"kernel": "/boot/vmlinuz-5.14.0-362", "args": ["ro", "quiet"]}]
    _el_tree(tree, folder, original)
    p = _plan(tree)
    assert p["settings"]["kernel_args"]["bootloader"] == "grubby"
    fs = HostFS.open(tree)
    report = engine.apply(p, fs)
    assert report["reboot_required"] and "kernel_args" in {c["area"] for c in report["changes"]}
    entries = json.loads((folder / "grubby.json").read_text())["entries"]
    for entry in entries:  # every entry holds every planned argument, the old isolcpus replaced
        assert set(p["kernel_args"]) <= set(entry["args"]) and "isolcpus=7" not in entry["args"]
    record = state.load(fs).originals["grubby:ALL"]
    assert record["entries"] == {"/boot/vmlinuz-5.14.0-427": {"added": p["kernel_args"], "previous": ["isolcpus=7"]},
                                 "/boot/vmlinuz-5.14.0-362": {"added": p["kernel_args"], "previous": []}}
    rows = [r for r in engine.verify(p, fs)["settings"] if r["area"] == "kernel_args"]
    assert [(r["name"], r["status"]) for r in rows][:2] == [("grubby (every boot entry)", "ok"),
                                                          ("running kernel command line", "pending-reboot")]
    assert engine.apply(p, fs)["changes"] == []  # idempotent: nothing added twice
    engine.restore(fs)
    back = json.loads((folder / "grubby.json").read_text())["entries"]
    assert [sorted(e["args"]) for e in back] == [sorted(e["args"]) for e in original]
    assert not any(argv[0] == "update-grub" for argv in log()), "update-grub must never run on EL"


def test_red_hat_grubby_failure_rolls_back_the_run(tree, standins, monkeypatch):
    folder, log = standins
    _el_tree(tree, folder, [{"kernel": "/boot/vmlinuz-5.14", "args": ["ro"]}])
    monkeypatch.setenv("STANDIN_GRUBBY_FAIL", "1")
    fs = HostFS.open(tree)
    with open(os.path.join(tree, "proc/sys/vm/swappiness")) as f:
        swappiness = f.read()
    with pytest.raises(engine.ApplyFailed, match="cannot write the boot entries"):
        engine.apply(_plan(tree), fs)
    with open(os.path.join(tree, "proc/sys/vm/swappiness")) as f:
        assert f.read().strip() == swappiness.strip()  # the runtime values this run wrote are back
    assert state.load(fs).originals == {}
    assert not any(argv[0] == "update-grub" for argv in log())


def test_isolcpus_without_domain_is_not_compared_with_the_isolated_file(tree):
    """/sys/devices/system/cpu/isolated lists only CPUs isolated with the `domain` flag: with
    isolcpus=managed_irq alone the kernel leaves it empty, and verify must not call that drift."""
    pol = {"isolation": {"isolcpus_flags": ["managed_irq"]}}
    p = _plan(tree, pol)
    fs = HostFS.open(tree)
    engine.apply(p, fs)
    with open(os.path.join(tree, "proc/cmdline"), "w") as f:  # as after the reboot
        f.write("BOOT_IMAGE=/vmlinuz root=/dev/vda1 " + " ".join(p["kernel_args"]))
    with open(os.path.join(tree, "sys/devices/system/cpu/isolated"), "w") as f:
        f.write("\n")
    fs.forget()
    report = engine.verify(p, fs)
    assert report["status"] == "ok", [r for r in report["settings"] if r["status"] != "ok"]
    assert "isolated CPUs" not in {r["name"] for r in report["settings"]}
    # with the domain flag the same empty file is drift: the kernel did not isolate them
    p = _plan(tree, {})
    with open(os.path.join(tree, "proc/cmdline"), "w") as f:
        f.write(" ".join(p["kernel_args"]))
    engine.apply(p, fs)
    fs.forget()
    rows = {r["name"]: r["status"] for r in engine.verify(p, fs)["settings"]}
    assert rows["isolated CPUs"] == "drift"


def test_systemd_boot_kernel_args_through_kernel_install(tree, standins):
    folder, log = standins
    os.remove(os.path.join(tree, "etc/default/grub"))
    os.makedirs(os.path.join(tree, "boot/efi/loader"))
    open(os.path.join(tree, "boot/efi/loader/loader.conf"), "w").close()
    with open(os.path.join(tree, "proc/sys/kernel/osrelease"), "w") as f:
        f.write("6.1.0-28-amd64\n")
    with open(os.path.join(tree, "proc/cmdline"), "w") as f:
        f.write("initrd=\\initrd.img root=UUID=1234 ro quiet isolcpus=5\n")
    p = _plan(tree)
    assert p["settings"]["kernel_args"]["bootloader"] == "systemd-boot"
    fs = HostFS.open(tree)
    assert engine.apply(p, fs)["reboot_required"]
    with open(os.path.join(tree, "etc/kernel/cmdline")) as f:
        assert f.read() == "root=UUID=1234 ro quiet " + " ".join(p["kernel_args"]) + "\n"
    assert ["kernel-install", "add", "6.1.0-28-amd64", "/boot/vmlinuz-6.1.0-28-amd64"] in log()
    assert log()[-1] == ["kernel-install-conf", None, None]  # apply: kernel-install reads /etc/kernel/cmdline
    with open(os.path.join(tree, "proc/cmdline"), "w") as f:  # rebooted into the planned arguments
        f.write("initrd=\\initrd.img root=UUID=1234 ro quiet " + " ".join(p["kernel_args"]) + "\n")
    os.makedirs(os.path.join(tree, "etc/kernel"), exist_ok=True)
    with open(os.path.join(tree, "etc/kernel/install.conf"), "w") as f:
        f.write("layout=bls\n")
    engine.restore(fs)
    assert not os.path.exists(os.path.join(tree, "etc/kernel/cmdline"))  # as it was: absent
    # the entry is written again from the command line before hosttune, not from /proc/cmdline
    assert log()[-2][0] == "kernel-install"
    assert log()[-1] == ["kernel-install-conf", "root=UUID=1234 ro quiet isolcpus=5\n", ["cmdline", "install.conf"]]


def test_service_stopped_and_started_again(tree, standins):
    """irqbalance: stop is a change like any other: saved, verified, restored as it was."""
    folder, log = standins
    (folder / "systemctl.json").write_text(json.dumps({"irqbalance": {"active": True, "enabled": True}}))
    p = _plan(tree, {"irqs": {"irqbalance": "stop"}})
    fs = HostFS.open(tree)
    dry = engine.apply(p, fs, dry_run=True)
    assert ["systemctl", "disable", "--now", "irqbalance"] in [c["argv"] for c in dry["commands"]]
    assert json.loads((folder / "systemctl.json").read_text())["irqbalance"]["active"] is True
    engine.apply(p, fs)
    assert json.loads((folder / "systemctl.json").read_text())["irqbalance"] == {"active": False, "enabled": False}
    row = next(r for r in engine.verify(p, fs)["settings"] if r["area"] == "irqbalance")
    assert (row["name"], row["status"], row["actual"]) == ("service", "ok", "inactive")
    (folder / "systemctl.json").write_text(json.dumps({"irqbalance": {"active": True, "enabled": False}}))
    row = next(r for r in engine.verify(p, fs)["settings"] if r["area"] == "irqbalance")
    assert row["status"] == "drift"  # started again behind hosttune's back
    engine.apply(p, fs)
    engine.restore(fs)
    assert json.loads((folder / "systemctl.json").read_text())["irqbalance"] == {"active": True, "enabled": True}


def test_restore_gives_back_exact_bytes_mode_and_owner(tree):
    """A config file hosttune edits comes back byte for byte, with its mode and group."""
    path = os.path.join(tree, "etc/default/irqbalance")
    original = b"# r\xe9glages\nIRQBALANCE_ONESHOT=\n\n\n"
    with open(path, "wb") as f:
        f.write(original)
    os.chmod(path, 0o640)
    os.chown(path, 0, 1)  # group daemon
    fs = HostFS.open(tree)
    engine.apply(_plan(tree), fs)
    with open(path, "rb") as f:
        assert b"IRQBALANCE_BANNED_CPULIST=" in f.read()
    engine.restore(fs)
    with open(path, "rb") as f:
        assert f.read() == original
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 1)


def test_kernel_argument_with_shell_syntax_never_reaches_the_grub_drop_in(tree):
    """Defence in depth below the policy's grammar: the writer refuses what a shell would parse."""
    p = _plan(tree)
    p["settings"]["kernel_args"]["args"] = ["$(touch /tmp/PWNED)"]
    with pytest.raises(HosttuneError, match="boot loader file cannot hold"):
        engine.apply(p, HostFS.open(tree), only=["kernel_args"])
    assert not os.path.exists(os.path.join(tree, "etc/default/grub.d/hosttune.cfg"))


def test_dry_run_on_this_machine_succeeds():
    """The README's demo path: this machine has no GRUB and no cpufreq; a dry run must not fail."""
    proc = run_cli("apply", "--dry-run")
    assert proc.returncode == 0, proc.stderr


def test_unusable_state_directory_is_one_line_and_changes_nothing(tree):
    """The lock cannot be taken (chattr +i, a read-only filesystem, a file where the directory
    should be): one line naming the lock file, exit 2, no value written."""
    os.makedirs(os.path.join(tree, "var/lib"), exist_ok=True)
    open(os.path.join(tree, "var/lib/hosttune"), "w").close()
    with open(os.path.join(tree, "proc/sys/vm/swappiness")) as f:
        before = f.read()
    proc = run_cli("apply", "--root", tree)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "var/lib/hosttune/lock" in proc.stderr
    with open(os.path.join(tree, "proc/sys/vm/swappiness")) as f:
        assert f.read() == before
