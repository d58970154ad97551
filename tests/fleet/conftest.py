"""Fixtures for the fleet tests: real sshd endpoints on 127.0.0.1, keys, host trees, inventories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.fleet import sshd as sshd_mod
from tests.treegen import Spec, write_tree

REPO = sshd_mod.REPO


def fleet_json(*args):
    """`hosttune fleet ARGS --json` with generous timeouts: (the process, {host: its result})."""
    proc = subprocess.run([sys.executable, "-m", "hosttune", "fleet", *args, "--json", "-q",
                           "--connect-timeout", "60", "--timeout", "120"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory):
    """{"good": key authorized on every test sshd, "wrong": a key no sshd accepts}."""
    reason = sshd_mod.missing()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("keys")
    return {"good": sshd_mod.keygen(str(d / "id_good")), "wrong": sshd_mod.keygen(str(d / "id_wrong"))}


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory, ssh_keys):
    """make(name, force_command=None) -> a started Sshd; all are stopped at the end of the session."""
    started: dict[str, sshd_mod.Sshd] = {}
    base = tmp_path_factory.mktemp("sshd")

    def make(name: str, force_command: str | None = None) -> sshd_mod.Sshd:
        if name not in started:
            started[name] = sshd_mod.Sshd(str(base / name), ssh_keys["good"] + ".pub", force_command).start()
        return started[name]

    yield make
    for server in started.values():
        server.stop()


@pytest.fixture
def silent_listener():
    listener = sshd_mod.SilentListener()
    yield listener
    listener.close()


def capture_tree(root: str, out: str) -> str:
    """`hosttune capture --root ROOT -o OUT` (the tarball form of a host tree)."""
    subprocess.run([*sshd_mod.hosttune_command().split(), "capture", "--root", root, "-o", out],
                   check=True, capture_output=True, timeout=120)
    return out


def applied_tree(root: str, spec: Spec, reboot_done: bool) -> str:
    """A synthetic tree after `hosttune apply` (default policy); with `reboot_done`, the planned kernel
    arguments are also on /proc/cmdline and the isolated CPUs are isolated, so verify says ok."""
    write_tree(root, spec)
    proc = subprocess.run([*sshd_mod.hosttune_command().split(), "apply", "--root", root, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 3), proc.stderr
    if reboot_done:
        plan = subprocess.run([*sshd_mod.hosttune_command().split(), "plan", "--root", root, "--json"],
                              capture_output=True, text=True, timeout=120, check=True)
        import json

        p = json.loads(plan.stdout)
        with open(os.path.join(root, "proc/cmdline")) as handle:
            cmdline = handle.read().strip()
        with open(os.path.join(root, "proc/cmdline"), "w") as handle:
            handle.write(cmdline + " " + " ".join(p["kernel_args"]) + "\n")
        from hosttune import cpulist

        with open(os.path.join(root, "sys/devices/system/cpu/isolated"), "w") as handle:
            handle.write(cpulist.format(p["isolated"]) + "\n")
    return root


@pytest.fixture(scope="session")
def host_roots(tmp_path_factory):
    """Distinct host trees: ok (applied, rebooted), pending (applied, not rebooted), drift (fresh),
    and a capture tarball of a 4-socket tree."""
    d = tmp_path_factory.mktemp("roots")
    roots = {
        "ok": applied_tree(str(d / "ok"), Spec(hostname="alpha"), reboot_done=True),
        "pending": applied_tree(str(d / "pending"), Spec(hostname="bravo", cores_per_node=2), reboot_done=False),
        "drift": write_tree(str(d / "drift"), Spec(hostname="charlie", sockets=1, cpufreq="acpi-cpufreq")),
    }
    write_tree(str(d / "delta"), Spec(hostname="delta", sockets=4, cores_per_node=2))
    roots["tarball"] = capture_tree(str(d / "delta"), str(d / "delta.tar.gz"))
    shutil.rmtree(d / "delta")
    return roots


def write_inventory(path, hosts: dict, group_vars: dict | None = None, all_vars: dict | None = None,
                    groups: dict | None = None) -> str:
    """An Ansible YAML inventory: hosts {name: vars} in group `fleet` (or `groups` {group: [names]}),
    plus group_vars/<group>.yml files."""
    path = str(path)
    os.makedirs(path, exist_ok=True)
    children = {}
    if groups:
        for g, names in groups.items():
            children[g] = {"hosts": {n: hosts[n] for n in names}}
        rest = {n: v for n, v in hosts.items() if not any(n in names for names in groups.values())}
        if rest:
            children["fleet"] = {"hosts": rest}
    else:
        children["fleet"] = {"hosts": hosts}
    inv = {"all": {"vars": all_vars or {}, "children": children}}
    with open(os.path.join(path, "hosts.yml"), "w") as handle:
        yaml.safe_dump(inv, handle, sort_keys=False)
    if group_vars:
        os.makedirs(os.path.join(path, "group_vars"), exist_ok=True)
        for group, text in group_vars.items():
            with open(os.path.join(path, "group_vars", f"{group}.yml"), "w") as handle:
                handle.write(text if isinstance(text, str) else yaml.safe_dump(text, sort_keys=False))
    return os.path.join(path, "hosts.yml")


def ssh_vars(server, key: str, root: str = "/", command: str | None = None) -> dict:
    return {"ansible_host": "127.0.0.1", "ansible_port": server.port if hasattr(server, "port") else server,
            "ansible_user": "root", "ansible_ssh_private_key_file": key,
            "hosttune_command": command or sshd_mod.hosttune_command(), "hosttune_root": root}
