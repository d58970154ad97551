"""ansible_become over real SSH and real sudo: a non-root login user (created here, removed
afterwards), a sudoers drop-in (NOPASSWD, then password required), hosttune run through
`sudo -n`/`sudo -S` as root. The host's tree is readable by root only, and hosttune_command is a
wrapper that notes who ran it: a host that is ok really ran hosttune as root."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile

import pytest

from tests.fleet import sshd as sshd_mod
from tests.fleet.conftest import fleet_json, ssh_vars, write_inventory

pytestmark = pytest.mark.skipif(sshd_mod.missing() is not None, reason=sshd_mod.missing() or "")

USER = "hosttune-fleet-test"
SUDOERS = f"/etc/sudoers.d/{USER}"


def sudoers(rule: str) -> None:
    """The drop-in for USER, checked by visudo before it is put in place."""
    tmp = SUDOERS + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(f"Defaults:{USER} lecture=never\n{USER} {rule}\n")
    os.chmod(tmp, 0o440)
    subprocess.run(["visudo", "-c", "-q", "-f", tmp], check=True)
    os.replace(tmp, SUDOERS)


@pytest.fixture
def login_user():
    """USER with a random password (a locked account cannot log in without PAM); the password."""
    if shutil.which("sudo") is None or shutil.which("visudo") is None:
        pytest.fail("sudo is not installed: the ansible_become tests need it "
                    "(add `sudo` to APT_PACKAGES in scripts/bootstrap)")
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
        created = True
    password = secrets.token_urlsafe(16)
    try:
        subprocess.run(["chpasswd"], input=f"{USER}:{password}\n", text=True, check=True)
        yield password
    finally:
        if os.path.exists(SUDOERS):
            os.unlink(SUDOERS)
        if created:
            subprocess.run(["userdel", "--remove", USER], check=False, capture_output=True)


@pytest.fixture
def user_sshd(ssh_keys):
    """An sshd whose files USER can read (the session's temp dirs are root's, mode 700)."""
    workdir = tempfile.mkdtemp(prefix="hosttune-fleet-become.")
    os.chmod(workdir, 0o755)
    server = sshd_mod.Sshd(os.path.join(workdir, "sshd"), ssh_keys["good"] + ".pub")
    os.chmod(server.dir, 0o755)
    try:
        yield server.start(), workdir
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def whoami_wrapper(workdir: str, name: str) -> tuple[str, str]:
    """(hosttune_command, log): a script that notes `id -un` in the log, then runs hosttune."""
    log = os.path.join(workdir, f"{name}.whoami")
    with open(log, "w"):
        pass
    os.chmod(log, 0o666)  # whoever runs it may write
    script = os.path.join(workdir, f"{name}.sh")
    with open(script, "w") as handle:
        handle.write(f"#!/bin/sh\nid -un >> {log}\nexec {sshd_mod.hosttune_command()} \"$@\"\n")
    os.chmod(script, 0o755)
    return script, log


def read(path: str) -> list[str]:
    with open(path) as handle:
        return handle.read().split()


def test_become_runs_hosttune_as_root_through_sudo(tmp_path, login_user, user_sshd, ssh_keys, host_roots):
    server, workdir = user_sshd
    password = login_user
    assert os.stat(host_roots["ok"]).st_uid == 0
    assert subprocess.run(["su", USER, "-c", f"ls {host_roots['ok']}"], capture_output=True).returncode != 0

    def host(name, **become):
        command, log = whoami_wrapper(workdir, name)
        return dict(ssh_vars(server, ssh_keys["good"], host_roots["ok"], command=command), ansible_user=USER,
                    **become), log

    hosts, logs = {}, {}
    for name, become in {
        "sudo": {"ansible_become": True},
        "plain": {"ansible_become": False},
        "password": {"ansible_become": "yes", "ansible_become_user": "root", "ansible_become_password": password},
        "nopassword": {"ansible_become": True},
        "wrongpassword": {"ansible_become": True, "ansible_become_pass": "not-" + password},
    }.items():
        hosts[name], logs[name] = host(name, **become)
    inv = write_inventory(tmp_path / "inv", hosts)

    # NOPASSWD: sudo -n
    sudoers("ALL=(root) NOPASSWD: ALL")
    proc, res = fleet_json("verify", "-i", inv, "--limit", "sudo:plain")
    assert res["sudo"]["status"] == "ok", res["sudo"]
    assert read(logs["sudo"]) == ["root"]  # hosttune ran as root (the tree is root's only)
    assert res["plain"]["status"] == "failed" and read(logs["plain"]) == [USER]
    # capture: mkdir as USER, hosttune capture through sudo, the download (SFTP) as USER
    caps = tmp_path / "caps"
    proc, res = fleet_json("capture", "-i", inv, "--limit", "sudo", "--out", str(caps))
    assert res["sudo"]["status"] == "ok" and res["sudo"]["hostname"] == "alpha", res["sudo"]
    assert read(logs["sudo"]) == ["root", "root"]

    # a password required: sudo -S with ansible_become_password on stdin
    sudoers("ALL=(root) ALL")
    proc, res = fleet_json("verify", "-i", inv, "--limit", "password:nopassword:wrongpassword")
    assert res["password"]["status"] == "ok", res["password"]
    assert read(logs["password"]) == ["root"]
    for name in ("nopassword", "wrongpassword"):
        assert res[name]["status"] == "failed" and read(logs[name]) == []
        assert res[name]["reason"].startswith("ansible_become: sudo -u root failed on the host: ")
    assert "password is required" in res["nopassword"]["reason"]
    assert "incorrect password" in res["wrongpassword"]["reason"]
    assert password not in proc.stdout + proc.stderr
