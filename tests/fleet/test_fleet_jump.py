"""Fleet through jump hosts, over real sshd: ProxyJump (one hop and a chain) and ProxyCommand from
ansible_ssh_common_args. The target's name resolves only inside the bastion's mount namespace
(its own /etc/hosts), so the controller cannot reach it directly: a host that is ok got there
through the bastion, and the bastion's log (LogLevel DEBUG1) shows the forwarded connection."""

from __future__ import annotations

import os
import re

import pytest

from tests.fleet import sshd as sshd_mod
from tests.fleet.conftest import fleet_json, ssh_vars, write_inventory

pytestmark = pytest.mark.skipif(sshd_mod.missing() is not None, reason=sshd_mod.missing() or "")

TARGET = "hosttune-fleet-target.test"  # resolves for the bastion only


def forwarded(server: sshd_mod.Sshd, host: str, port: int) -> int:
    """direct-tcpip channels `server` opened to host:port (sshd's DEBUG1 log)."""
    pattern = rf"server_request_direct_tcpip: originator \S* port \d+, target {re.escape(host)} port {port}\b"
    return len(re.findall(pattern, server.log_text()))


@pytest.fixture
def bastions(tmp_path, ssh_keys):
    """{"bastion": where TARGET resolves, "hop": a plain jump host in front of it}; stopped afterwards."""
    key = ssh_keys["good"] + ".pub"
    servers = {
        "bastion": sshd_mod.Sshd(str(tmp_path / "bastion"), key, log_level="DEBUG1",
                                 hosts=f"127.0.0.1 localhost\n127.0.0.1 {TARGET}\n"),
        "hop": sshd_mod.Sshd(str(tmp_path / "hop"), key, log_level="DEBUG1"),
    }
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_proxy_jump_and_proxy_command(tmp_path, sshd_factory, ssh_keys, host_roots, bastions):
    target = sshd_factory("a")
    bastion, hop = bastions["bastion"], bastions["hop"]
    key = ssh_keys["good"]
    tokens = tmp_path / "proxy-tokens.log"
    ssh_client = (f"ssh -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                  f"-p {bastion.port} -W %h:%p root@127.0.0.1")

    def behind(port, args):
        return dict(ssh_vars(port, key, host_roots["ok"]), ansible_host=TARGET, ansible_ssh_common_args=args)

    inv = write_inventory(tmp_path / "inv", {
        "jumped": behind(target, f"-o ProxyJump=root@127.0.0.1:{bastion.port} -o ServerAliveInterval=30"),
        "chained": behind(target, f"-C -J root@127.0.0.1:{hop.port},root@127.0.0.1:{bastion.port}"),
        "proxied": behind(target, f"""-o ProxyCommand="sh -c 'echo %r@%h:%p >> {tokens}; exec {ssh_client}'" """
                                  "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"),
        "direct": behind(target, "-o ControlMaster=auto -o ControlPersist=60s"),  # no jump: cannot resolve
        "refused": behind(sshd_mod.closed_port(), f"-o ProxyJump=root@127.0.0.1:{bastion.port}"),
    })
    proc, hosts = fleet_json("verify", "-i", inv)
    assert proc.returncode == 1, proc.stderr
    status = {name: (h["status"], h["reason"]) for name, h in hosts.items()}
    assert hosts["jumped"]["status"] == "ok" and hosts["chained"]["status"] == "ok", status
    assert hosts["proxied"]["status"] == "ok", status
    assert hosts["direct"]["status"] == "unreachable" and f"cannot resolve {TARGET}" in hosts["direct"]["reason"]
    refused = hosts["refused"]
    assert refused["status"] == "unreachable"
    assert refused["reason"].startswith(f"jump host root@127.0.0.1:{bastion.port} cannot connect to {TARGET}:")
    # the path: the bastion forwarded to the target for jumped, chained, proxied (and tried for refused)
    assert forwarded(bastion, TARGET, target.port) == 3
    assert forwarded(hop, "127.0.0.1", bastion.port) == 1  # chained: the first hop forwarded to the bastion
    assert tokens.read_text() == f"root@{TARGET}:{target.port}\n"  # %r@%h:%p as ssh expands them

    # the bastion down: unreachable, the message names the jump host (or the ProxyCommand's error)
    bastion.stop()
    proc, hosts = fleet_json("verify", "-i", inv, "--limit", "jumped:chained:proxied")
    assert proc.returncode == 1
    assert {h["status"] for h in hosts.values()} == {"unreachable"}
    assert hosts["jumped"]["reason"] == \
        f"cannot connect to jump host root@127.0.0.1:{bastion.port}: Connection refused"
    assert hosts["chained"]["reason"].startswith(
        f"jump host root@127.0.0.1:{hop.port} cannot connect to 127.0.0.1:{bastion.port}:")
    proxied = hosts["proxied"]["reason"]
    assert proxied.startswith(f"ProxyCommand for root@{TARGET}:{target.port} exited 255 before the SSH handshake:")
    assert f"port {bastion.port}: Connection refused" in proxied


def test_capture_through_a_jump_host(tmp_path, sshd_factory, ssh_keys, host_roots, bastions):
    """SFTP (the download of the capture) goes through the bastion too."""
    target, bastion = sshd_factory("a"), bastions["bastion"]
    inv = write_inventory(tmp_path / "inv", {
        "jumped": dict(ssh_vars(target, ssh_keys["good"], host_roots["tarball"]), ansible_host=TARGET,
                       ansible_ssh_extra_args=f"-J root@127.0.0.1:{bastion.port}"),
    })
    caps = tmp_path / "caps"
    proc, hosts = fleet_json("capture", "-i", inv, "--out", str(caps))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hosts["jumped"]["hostname"] == "delta" and os.listdir(caps) == ["jumped.tar.gz"]
    assert forwarded(bastion, TARGET, target.port) == 1
