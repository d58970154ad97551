"""Restore says itself whether the host needs a reboot, from what the boot area put back, on each
of the three boot loaders (GRUB drop-in, systemd-boot's /etc/kernel/cmdline, grubby's entries);
the CLI exits 3, the apply module reports it (rc 3 is success), the restore role warns (it reboots
only the live root). Boot commands are the stand-ins of tests/test_areas.py (HOSTTUNE_RUN_COMMANDS=1)."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.conftest import run_cli
from tests.test_ansible import HOSTTUNE, base_vars, host, play  # noqa: F401 - fixtures
from tests.test_areas import _el_tree, standins  # noqa: F401 - fixture

LOADERS = ["grub", "systemd-boot", "grubby"]


def boot_loader(root: str, loader: str, folder) -> str:
    """Make the synthetic tree boot through `loader`; returns the path of what apply stages."""
    if loader == "grub":
        return "/etc/default/grub.d/hosttune.cfg"
    if loader == "grubby":
        _el_tree(root, folder, [{"kernel": "/boot/vmlinuz-5.14.0-427", "args": ["ro", "quiet"]}])
        return "grubby:ALL"
    os.remove(os.path.join(root, "etc/default/grub"))
    os.makedirs(os.path.join(root, "boot/efi/loader"))
    open(os.path.join(root, "boot/efi/loader/loader.conf"), "w").close()
    with open(os.path.join(root, "proc/sys/kernel/osrelease"), "w") as f:
        f.write("6.1.0-28-amd64\n")
    return "/etc/kernel/cmdline"


def apply_then_rebooted(root: str, loader: str) -> list[str]:
    """Apply everything, then boot into the planned arguments; returns them."""
    plan = json.loads(run_cli("plan", "--root", root, "--json", check=0).stdout)
    assert plan["settings"]["kernel_args"]["bootloader"] == loader
    run_cli("apply", "--root", root, check=3)
    with open(os.path.join(root, "proc/cmdline"), "w") as f:
        f.write("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet " + " ".join(plan["kernel_args"]) + "\n")
    return plan["kernel_args"]


@pytest.mark.parametrize("loader", LOADERS)
def test_restore_of_the_boot_configuration_exits_3_and_says_reboot(host, standins, loader):  # noqa: F811
    folder, log = standins
    staged = boot_loader(host, loader, folder)
    apply_then_rebooted(host, loader)
    proc = run_cli("restore", "--root", host, "--json", check=3)
    report = json.loads(proc.stdout)
    assert staged in report["restored"] and report["failed"] == []
    assert report["reboot_required"] is True
    text = run_cli("restore", "--root", host, check=0).stdout  # nothing left to put back
    assert "0 value(s) restored" in text and "reboot required" not in text

    # runtime areas only: nothing waits for a boot, exit 0
    run_cli("apply", "--root", host, "--only", "sysctls", "thp", check=0)
    quiet = json.loads(run_cli("restore", "--root", host, "--json", check=0).stdout)
    assert "/proc/sys/vm/swappiness" in quiet["restored"] and quiet["reboot_required"] is False
    if loader == "grubby":
        assert not any(argv[0] == "update-grub" for argv in log())


def restore_task(tmp_path, root: str, warning=None) -> str:
    task = {"hosttune.tuning.apply": {"command": "restore", "bin": HOSTTUNE, "root": root}, "register": "restored"}
    if warning:
        task["hosttune.tuning.apply"]["reboot_warning"] = warning
    path = tmp_path / "restore-module.yml"
    path.write_text(yaml.safe_dump([{"name": "Restore through the module", "hosts": "hosttune",
                                     "gather_facts": False, "tasks": [{"name": "Restore", **task}]}],
                                   sort_keys=False))
    return str(path)


@pytest.mark.parametrize("loader", LOADERS)
def test_the_apply_module_reports_restores_reboot_and_accepts_exit_3(tmp_path, host, standins, loader):  # noqa: F811
    folder, _ = standins
    staged = boot_loader(host, loader, folder)
    apply_then_rebooted(host, loader)
    run = play(tmp_path, restore_task(tmp_path, host, warning="reboot to drop the kernel arguments"), {})
    assert run.rc == 0, run.explain()
    res = run.task("Restore")[0]["res"]
    assert res["exit_code"] == 3 and res["changed"] is True
    assert res["reboot_required"] is True and res["result"]["reboot_required"] is True
    assert staged in [c["path"] for c in res["changes"]]
    assert "reboot to drop the kernel arguments" in run.warnings(), run.warnings()


@pytest.mark.parametrize("loader", LOADERS)
def test_the_restore_role_says_a_reboot_is_needed(tmp_path, host, base_vars, standins, loader):  # noqa: F811
    folder, _ = standins
    boot_loader(host, loader, folder)
    apply_then_rebooted(host, loader)
    # allowed to reboot, but not the live root: the role must not reboot this machine, it warns
    run = play(tmp_path, "restore.yml", {**base_vars, "hosttune_restore_reboot_ok": True})
    assert run.rc == 0, run.explain()
    res = run.task("Restore what hosttune changed")[0]["res"]
    assert res["exit_code"] == 3 and res["reboot_required"] is True
    assert run.skipped("Reboot to drop hosttune's kernel arguments")
    said = run.task("Say that a reboot is still needed")
    assert said and "stay active until the next reboot" in said[0]["res"]["msg"], run.explain()
    if loader == "grubby":
        entries = json.loads((folder / "grubby.json").read_text())["entries"]
        assert entries[0]["args"] == ["ro", "quiet"]  # put back exactly
    elif loader == "systemd-boot":
        assert not os.path.exists(os.path.join(host, "etc/kernel/cmdline"))
