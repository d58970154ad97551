"""The inventory's ssh options (ansible_ssh_args/_common_args/_extra_args) and become variables,
parsed without SSH: good values, and hostile ones that must be one-line errors naming the host
and the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from hosttune.errors import HosttuneError
from hosttune.fleet import inventory, sshargs
from hosttune.fleet.ssh import Options, ProxyCommandSocket, Session, _sudo_refused
from hosttune.fleet.sshargs import Hop, SshArgError, expand_proxy_command, parse
from tests.fleet.conftest import REPO, write_inventory


def test_proxy_jump_forms():
    assert parse("-o ProxyJump=user@bastion:2222").jump == [Hop("bastion", 2222, "user")]
    assert parse("-J bastion").jump == [Hop("bastion")]
    assert parse("-Jbastion.example.com").jump == [Hop("bastion.example.com")]
    assert parse("-o 'ProxyJump bastion'").jump == [Hop("bastion")]  # "Keyword value" form
    chain = parse("-J a@one:2200,two,ssh://b@three:22").jump
    assert chain == [Hop("one", 2200, "a"), Hop("two"), Hop("three", 22, "b")]
    assert [str(h) for h in chain] == ["a@one:2200", "two", "b@three:22"]
    assert parse("-J root@[::1]:2222").jump == [Hop("::1", 2222, "root")]
    assert str(Hop("::1", 2222, "root")) == "root@[::1]:2222"
    args = parse("-J none")
    assert args.proxy_set and args.jump == [] and args.proxy_command is None


def test_proxy_command_keeps_quotes_and_tokens():
    args = parse('-o ProxyCommand="ssh -W %h:%p -q bastion"')
    assert args.proxy_set and args.proxy_command == "ssh -W %h:%p -q bastion" and args.jump == []
    # ssh_config-style quotes inside the option
    assert parse("""-o 'ProxyCommand="nc %h %p"'""").proxy_command == "nc %h %p"
    assert expand_proxy_command("ssh -l %r -W %h:%p -o X=%n 100%%", "10.0.0.5", 2222, "deploy") == \
        "ssh -l deploy -W 10.0.0.5:2222 -o X=10.0.0.5 100%"


def test_first_value_wins_like_ssh():
    args = parse("-J first -o ProxyCommand='nc %h %p' -J second")
    assert args.jump == [Hop("first")] and args.proxy_command is None
    args = sshargs.SshArgs()
    parse("-o ProxyJump=none -p 2200", args)  # ansible_ssh_args
    parse("-J bastion -p 2300 -o StrictHostKeyChecking=no", args)  # ansible_ssh_common_args
    parse("-o StrictHostKeyChecking=yes", args)  # ansible_ssh_extra_args
    assert args.proxy_set and args.jump == [] and args.port == 2200 and args.strict_host_keys == "no"


def test_common_options_are_honoured_or_ignored():
    args = parse("-C -o ControlMaster=auto -o ControlPersist=60s -o ControlPath=/tmp/%C "
                 "-o ServerAliveInterval=30 -o ServerAliveCountMax=3 -o StrictHostKeyChecking=no "
                 "-o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/etc/ssh/fleet_known_hosts "
                 "-o IdentitiesOnly=yes -o ForwardAgent=yes -Aqt -o PasswordAuthentication=no "
                 "-i ~/.ssh/fleet -o IdentityFile=/etc/fleet/key -p2222 -l deploy -E /tmp/ssh.log")
    assert args.strict_host_keys == "no" and args.user_known_hosts == []
    assert args.global_known_hosts == ["/etc/ssh/fleet_known_hosts"]
    assert args.identity_files == [os.path.expanduser("~/.ssh/fleet"), "/etc/fleet/key"]
    assert (args.port, args.user, args.password_auth, args.proxy_set) == (2222, "deploy", False, False)
    assert parse("-o StrictHostKeyChecking=accept-new").strict_host_keys == "accept-new"
    assert parse("-o stricthostkeychecking=OFF").strict_host_keys == "no"  # keywords and values: any case
    assert parse("").proxy_set is False


@pytest.mark.parametrize("value, message", [
    ("-F /etc/ssh/other_config", "-F (another ssh config file) is not supported"),
    ("-o Ciphers=aes128-ctr", "-o Ciphers is not supported"),
    ("-o HostKeyAlgorithms=+ssh-rsa", "-o HostKeyAlgorithms is not supported"),
    ("-c aes128-ctr", "-c (cipher) is not supported"),
    ("-b 10.0.0.1", "-b (bind address) is not supported"),
    ("-4", "-4 (IPv4 only) is not supported"),
    ("-Z", "-Z is not supported"),
    ("-N", "-N (no remote command) is not supported"),
    ("bastion", "unexpected argument 'bastion'"),
    ("-J", "-J needs an argument"),
    ("-o", "-o needs an argument"),
    ("-o ProxyJump", "-o 'ProxyJump' is not Keyword=value"),
    ("-o ProxyCommand='nc %h %P'", "unknown token '%P'"),
    ("-o ProxyCommand='nc %h 100%'", "unknown token '%'"),
    ("-J 'bast ion'", "ProxyJump host 'bast ion' is not [user@]host[:port]"),
    ("-J -oProxyCommand=evil", "ProxyJump host '-oProxyCommand=evil'"),
    ("-J 'a;touch /tmp/x'", "is not [user@]host[:port]"),
    ("-J root@bastion:0", "ProxyJump port '0' is not a TCP port"),
    ("-J b:99999", "ProxyJump port '99999' is not a TCP port"),
    ("-J " + ",".join(f"h{i}" for i in range(9)), "ProxyJump has 9 hops (at most 8)"),
    ("-p http", "-p 'http' is not a TCP port"),
    ("-l '-oProxyCommand=x'", "-l '-oProxyCommand=x' is not a user name"),
    ("-o StrictHostKeyChecking=maybe", "must be one of yes, no, accept-new, ask"),
    ("-o PasswordAuthentication=perhaps", "must be yes or no"),
    ("-i ~/.ssh/id_%u", "% tokens are not supported"),
    ("-o 'ProxyJump=b", "cannot split it like a shell would (No closing quotation)"),
    ("-J bastion\n-F /x", "control character ('\\n')"),
    ("-J bastion\0", "control character ('\\x00')"),
    ("-o ServerAliveInterval=" + "9" * 5000, "characters long (at most 4096)"),
])
def test_hostile_and_unsupported_values(value, message):
    with pytest.raises(SshArgError) as caught:
        parse(value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200  # one short line


@pytest.mark.parametrize("host, user", [("a;rm -rf /", "root"), ("$(reboot)", "root"), ("ok", "x`id`"),
                                        ("-oProxyCommand=x", "root")])
def test_proxy_command_refuses_shell_metacharacters_in_names(host, user):
    with pytest.raises(SshArgError, match="not safe to pass to a shell"):
        expand_proxy_command("nc %h %p # %r", host, 22, user)


def test_inventory_reads_ssh_args_and_become(tmp_path):
    inv = write_inventory(tmp_path / "inv", {
        "web1": {"ansible_ssh_common_args": "-o ProxyJump=jump@bastion:2222 -o StrictHostKeyChecking=no",
                 "ansible_become": "yes", "ansible_become_pass": "s3cret"},
        "web2": {"ansible_ssh_extra_args": "-p 2200 -l deploy", "ansible_port": 2201,
                 "ansible_become": True, "ansible_become_user": "hosttune", "ansible_become_method": "sudo"},
        "web3": {"ansible_ssh_args": "-C -o ControlMaster=auto -o ControlPersist=60s",
                 "ansible_become": False, "ansible_become_method": "su"},  # not used: not an error
    }, all_vars={"bastion_args": "-J {{ 'bastion' }}"})
    web1, web2, web3 = inventory.load([inv])
    assert web1.ssh.jump == [Hop("bastion", 2222, "jump")] and web1.ssh.strict_host_keys == "no"
    assert (web1.become, web1.become_user, web1.become_password) == (True, "root", "s3cret")
    assert "s3cret" not in repr(web1)
    assert (web2.port, web2.user) == (2201, "deploy")  # ansible_port wins over -p; -l fills the unset user
    assert (web2.become, web2.become_user, web2.become_password) == (True, "hosttune", None)
    assert web3.ssh.proxy_set is False and web3.become is False


@pytest.mark.parametrize("host_vars, message", [
    ({"ansible_ssh_common_args": "-F ~/.ssh/fleet_config"},
     "ansible_ssh_common_args of host web1: -F (another ssh config file) is not supported"),
    ({"ansible_ssh_extra_args": "-o ProxyCommand='nc %h %Q'"}, "ansible_ssh_extra_args of host web1: ProxyCommand"),
    ({"ansible_ssh_args": ["-J", "bastion"]}, "ansible_ssh_args of host web1: must be a string, got list"),
    ({"ansible_host": "$(reboot)", "ansible_ssh_common_args": "-o ProxyCommand='nc %h %p'"},
     "ansible_host of host web1: ProxyCommand: the host name '$(reboot)' is not safe to pass to a shell"),
    ({"ansible_become": "maybe"}, "ansible_become of host web1: must be a boolean"),
    ({"ansible_become": True, "ansible_become_method": "su"},
     "ansible_become_method of host web1: 'su' is not supported by hosttune fleet (sudo only)"),
    ({"ansible_become": True, "ansible_become_user": "root; reboot"},
     "ansible_become_user of host web1: 'root; reboot' is not a user name"),
    ({"ansible_become": True, "ansible_become_password": "one\ntwo"},
     "ansible_become_password of host web1: the password contains a control character"),
])
def test_inventory_errors_name_the_host_and_variable(tmp_path, host_vars, message):
    inv = write_inventory(tmp_path / "inv", {"web1": host_vars})
    with pytest.raises(HosttuneError) as caught:
        inventory.load([inv])
    assert message in str(caught.value)
    assert re.match(r"\S*/inv/hosts\.yml:\d+: ", str(caught.value))  # the file and line it came from
    assert "one\ntwo" not in str(caught.value)


def test_cli_refuses_unsupported_ssh_args_exit_2_one_line(tmp_path):
    inv = write_inventory(tmp_path / "inv", {"web1": {"ansible_host": "192.0.2.1"}},
                          group_vars={"fleet": {"ansible_ssh_common_args": "-o ProxyJump=bastion -F /etc/x"}})
    proc = subprocess.run([sys.executable, "-m", "hosttune", "fleet", "verify", "-i", inv], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert "group_vars/fleet.yml:1: ansible_ssh_common_args of host web1: -F (another ssh config file)" in err[0]


class _Conn:
    def __init__(self, user):
        self.user = user


def _session(user="deploy", **become):
    host = inventory.FleetHost(name="h", address="192.0.2.1", command="/opt/hosttune/bin/hosttune", **become)
    s = Session(host, Options())
    s._conn = _Conn(user)
    return s


def test_become_prefix_is_the_one_place_commands_are_wrapped():
    assert _session().hosttune(["verify", "--root", "/"]) == "/opt/hosttune/bin/hosttune verify --root /"
    s = _session(become=True)
    assert s.hosttune(["verify", "--root", "/a b"]) == \
        "sudo -n -u root -- /opt/hosttune/bin/hosttune verify --root '/a b'"
    assert s._display(s.hosttune(["verify"])) == "hosttune verify"
    s = _session(become=True, become_user="svc", become_password="pw'; echo leaked")
    command = s.hosttune(["capture"])
    assert command == "sudo -S -p '' -u svc -- /opt/hosttune/bin/hosttune capture"
    assert "leaked" not in command  # the password goes on stdin, never on the command line
    assert _session(user="root", become=True).hosttune(["verify"]) == "/opt/hosttune/bin/hosttune verify"


def test_sudo_refusals_are_told_from_hosttune_failures():
    assert _sudo_refused(1, "", "sudo: a password is required\n")
    assert _sudo_refused(1, "", "Sorry, try again.\nsudo: 1 incorrect password attempt\n")
    assert _sudo_refused(127, "", "sh: 1: sudo: not found\n")
    assert not _sudo_refused(1, '{"schema": "hosttune.verify/1"}', "sudo: something\n")  # drift, with JSON
    assert not _sudo_refused(2, "", "hosttune: error: /x: no such root\n")
    assert not _sudo_refused(127, "", "sh: 1: /opt/hosttune/bin/hosttune: not found\n")


def test_proxy_command_socket_reports_eof_and_stderr():
    # run as ssh runs it, `exec COMMAND`: one command (here a shell of its own)
    proxy = ProxyCommandSocket("sh -c \"printf 'SSH-2.0-x\\r\\n'; echo 'channel 0: open failed' >&2; exit 255\"")
    proxy.settimeout(30)
    data = b""
    while True:
        chunk = proxy.recv(64)  # a socket's EOF (b""), not paramiko's busy loop until the timeout
        if not chunk:
            break
        data += chunk
    assert data == b"SSH-2.0-x\r\n"
    assert proxy.process.wait(timeout=30) == 255
    assert proxy.stderr_text() == "channel 0: open failed" and not proxy.closed_by_us
    proxy.close()
    sleeper = ProxyCommandSocket("sleep 600")
    sleeper.close()
    assert sleeper.closed_by_us and sleeper.process.returncode is not None
