"""The ssh options of an inventory host: `ansible_ssh_args`, `ansible_ssh_common_args` and
`ansible_ssh_extra_args`, parsed the way ssh(1) reads its command line, into what fleet's SSH
session (Fabric/paramiko) can do with them.

Honoured: `-J`/`ProxyJump` (a chain of `[user@]host[:port]` hops), `ProxyCommand` (%h %n %p %r %%),
`-i`/`IdentityFile`, `-p`/`Port`, `-l`/`User`, `StrictHostKeyChecking`, `UserKnownHostsFile`,
`GlobalKnownHostsFile`, `PasswordAuthentication`. Ignored, because they change nothing about where
or how we connect (connection sharing, keepalives, logging, forwarding we never use): the
IGNORED_* sets below. Anything else would change the connection in a way we cannot reproduce
(another ssh config, ciphers, bind address...): an error, so that fleet never silently connects
differently from the roles.

As for ssh, the first value of an option wins; the variables are read in the order Ansible
puts them on the ssh command line (ssh_args, ssh_common_args, ssh_extra_args).

The values are hostile input: bounded length, no NUL or line breaks, every value checked.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from hosttune import numbers

VARIABLES = ("ansible_ssh_args", "ansible_ssh_common_args", "ansible_ssh_extra_args")
MAX_LENGTH = 4096  # per variable
MAX_HOPS = 8

# ssh(1) flags that take an argument, and the ones among them we honour or ignore
FLAGS_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")
HONOURED_WITH_ARG = set("iJlop")
IGNORED_WITH_ARG = {"E": "log file", "e": "escape character", "S": "control socket"}
# flags without an argument that change nothing for us (agent/X11 forwarding, tty, verbosity,
# compression, connection sharing, GSSAPI)
IGNORED_FLAGS = set("AaCgKkMnqTtvXxY")
FLAG_NAMES = {"F": "another ssh config file", "4": "IPv4 only", "6": "IPv6 only", "b": "bind address",
              "B": "bind interface", "c": "cipher", "m": "MAC", "D": "dynamic forwarding",
              "L": "local forwarding", "R": "remote forwarding", "W": "stdio forwarding",
              "w": "tunnel device", "N": "no remote command", "f": "background", "s": "subsystem",
              "G": "print the configuration", "V": "print the version", "I": "PKCS#11 library",
              "O": "control command", "P": "tag", "Q": "query"}

# -o keywords (lower case) that do not change where or how we connect
IGNORED_OPTIONS = {
    "addkeystoagent", "batchmode", "challengeresponseauthentication", "checkhostip", "clearallforwardings",
    "compression", "connectionattempts", "connecttimeout", "controlmaster", "controlpath", "controlpersist",
    "escapechar", "exitonforwardfailure", "forwardagent", "forwardx11", "forwardx11trusted",
    "gssapiauthentication", "gssapidelegatecredentials", "hashknownhosts", "identitiesonly",
    "kbdinteractiveauthentication", "loglevel", "nohostauthenticationforlocalhost", "preferredauthentications",
    "pubkeyauthentication", "requesttty", "serveralivecountmax", "serveraliveinterval", "tcpkeepalive",
    "updatehostkeys", "visualhostkey",
}
HOST_KEY_CHECKING = {"yes": "yes", "no": "no", "off": "no", "accept-new": "accept-new", "ask": "ask"}
PROXY_TOKENS = set("%hnpr")  # what ssh expands in ProxyCommand

_USER = r"[A-Za-z0-9._][A-Za-z0-9._-]*"
_HOST = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_HOP = re.compile(rf"(?:(?P<user>{_USER})@)?(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>{_HOST}))(?::(?P<port>[0-9]{{1,5}}))?")
_OPTION = re.compile(r"\s*(?P<key>[A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(?P<value>.*?)\s*")
# what a host or user name may contain when it goes into a ProxyCommand (run by /bin/sh), as
# OpenSSH >= 9.6 also requires of names from its command line
SAFE_NAME = re.compile(r"[A-Za-z0-9._:@-]+")


class SshArgError(ValueError):
    """A value fleet cannot honour; the caller names the host and the variable."""


@dataclass
class Hop:
    """One jump host of a ProxyJump chain; None: from the ssh config, else ssh's default."""

    host: str
    port: int | None = None
    user: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")


@dataclass
class SshArgs:
    proxy_set: bool = False  # the inventory chose the proxy (maybe none): the ssh config's does not apply
    jump: list[Hop] = field(default_factory=list)  # ProxyJump hops, the first one connected to first
    proxy_command: str | None = None  # ProxyCommand, tokens not yet expanded
    user: str | None = None  # -l / User (ansible_user wins)
    port: int | None = None  # -p / Port (ansible_port wins)
    identity_files: list[str] = field(default_factory=list)  # -i / IdentityFile, in order
    strict_host_keys: str | None = None  # StrictHostKeyChecking: yes | no | accept-new | ask
    user_known_hosts: list[str] | None = None  # UserKnownHostsFile ([] for none / /dev/null)
    global_known_hosts: list[str] | None = None  # GlobalKnownHostsFile
    password_auth: bool | None = None  # PasswordAuthentication
    seen: set[str] = field(default_factory=set, repr=False)  # options already set (first one wins)

    def first(self, key: str) -> bool:
        """True the first time option `key` is set (ssh keeps the first value of an option)."""
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def check_value(value: object, what: str = "value") -> str:
    """A string of bounded length with no NUL and no line break."""
    if not isinstance(value, str):
        raise SshArgError(f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_LENGTH:
        raise SshArgError(f"{what} is {len(value)} characters long (at most {MAX_LENGTH})")
    bad = next((c for c in value if c in "\0\n\r" or (ord(c) < 32 and c != "\t")), None)
    if bad is not None:
        raise SshArgError(f"{what} contains a control character ({bad!r})")
    return value


def parse(value: str, into: SshArgs | None = None) -> SshArgs:
    """Parse one variable's value (an ssh command-line fragment) into `into`."""
    args = into if into is not None else SshArgs()
    check_value(value)
    try:
        tokens = shlex.split(value)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise SshArgError(f"cannot split it like a shell would ({exc})") from None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-") or token == "-":
            raise SshArgError(f"unexpected argument {_show(token)} (only ssh options belong here)")
        j = 1
        while j < len(token):  # -Cq: several flags in one word; -p22 / -oKey=value: attached argument
            flag = token[j]
            j += 1
            if flag in FLAGS_WITH_ARG:
                if j < len(token):
                    arg = token[j:]
                elif i < len(tokens):
                    arg, i = tokens[i], i + 1
                else:
                    raise SshArgError(f"-{flag} needs an argument")
                _flag_with_arg(args, flag, arg)
                break
            if flag not in IGNORED_FLAGS:
                raise SshArgError(_unsupported(f"-{flag}", FLAG_NAMES.get(flag)))
    return args


def _flag_with_arg(args: SshArgs, flag: str, arg: str) -> None:
    if flag == "o":
        _option(args, arg)
    elif flag == "J":
        _proxy_jump(args, arg)
    elif flag == "i":
        args.identity_files.append(_path(arg, "-i"))
    elif flag == "p":
        if args.first("port"):
            args.port = _port(arg, "-p")
    elif flag == "l":
        if args.first("user"):
            args.user = _user(arg, "-l")
    elif flag not in IGNORED_WITH_ARG:
        raise SshArgError(_unsupported(f"-{flag}", FLAG_NAMES.get(flag)))


def _option(args: SshArgs, text: str) -> None:
    """-o Keyword=value (or "Keyword value")."""
    m = _OPTION.fullmatch(text)
    if not m or not m.group("value"):
        raise SshArgError(f"-o {_show(text)} is not Keyword=value")
    key, value = m.group("key").lower(), _unquote(m.group("value"))
    name = m.group("key")
    if key == "proxyjump":
        _proxy_jump(args, value)
    elif key == "proxycommand":
        _proxy_command(args, value)
    elif key == "identityfile":
        args.identity_files.append(_path(value, name))
    elif key == "port":
        if args.first("port"):
            args.port = _port(value, name)
    elif key == "user":
        if args.first("user"):
            args.user = _user(value, name)
    elif key == "stricthostkeychecking":
        mode = HOST_KEY_CHECKING.get(value.lower())
        if mode is None:
            raise SshArgError(f"{name}={_show(value)}: must be one of yes, no, accept-new, ask")
        if args.first(key):
            args.strict_host_keys = mode
    elif key in ("userknownhostsfile", "globalknownhostsfile"):
        files = [] if value.lower() == "none" else [_path(p, name) for p in value.split()]
        files = [p for p in files if p != os.devnull]  # /dev/null: no known hosts at all
        if args.first(key):
            if key == "userknownhostsfile":
                args.user_known_hosts = files
            else:
                args.global_known_hosts = files
    elif key == "passwordauthentication":
        if value.lower() not in ("yes", "no"):
            raise SshArgError(f"{name}={_show(value)}: must be yes or no")
        if args.first(key):
            args.password_auth = value.lower() == "yes"
    elif key not in IGNORED_OPTIONS:
        raise SshArgError(_unsupported(f"-o {name}", None))


def _proxy_jump(args: SshArgs, value: str) -> None:
    """[user@]host[:port][,...] or none; like ssh, the first ProxyJump/ProxyCommand wins."""
    hops = [] if value.lower() == "none" else [_hop(spec) for spec in value.split(",")]
    if len(hops) > MAX_HOPS:
        raise SshArgError(f"ProxyJump has {len(hops)} hops (at most {MAX_HOPS})")
    if args.first("proxy"):
        args.proxy_set, args.jump = True, hops


def _hop(spec: str) -> Hop:
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://"):]
    m = _HOP.fullmatch(spec.strip())
    if not m:
        raise SshArgError(f"ProxyJump host {_show(spec)} is not [user@]host[:port]")
    port = _port(m.group("port"), "ProxyJump port") if m.group("port") else None
    return Hop(host=m.group("v6") or m.group("host"), port=port, user=m.group("user"))


def _proxy_command(args: SshArgs, value: str) -> None:
    """ProxyCommand: run by /bin/sh; only the tokens ssh expands there (%h %n %p %r %%)."""
    if value.lower() != "none":
        for m in re.finditer(r"%(.?)", value):
            if m.group(1) not in PROXY_TOKENS:
                token = "%" + m.group(1)
                raise SshArgError(f"ProxyCommand: unknown token {token!r} (ssh expands %h, %n, %p, %r and %%)")
    if args.first("proxy"):
        args.proxy_set, args.proxy_command = True, (None if value.lower() == "none" else value)


def expand_proxy_command(template: str, host: str, port: int, user: str) -> str:
    """ProxyCommand with %h/%n (the host), %p, %r (the remote user) and %% expanded, as ssh does.
    The names are checked first: they are pasted into a shell command."""
    for what, name in (("host", host), ("user", user)):
        if not SAFE_NAME.fullmatch(name) or name.startswith("-"):
            raise SshArgError(f"ProxyCommand: the {what} name {_show(name)} is not safe to pass to a shell")
    values = {"h": host, "n": host, "p": str(port), "r": user, "%": "%"}
    return re.sub(r"%(.)", lambda m: values[m.group(1)], template)


def _port(text: str, what: str) -> int:
    port = numbers.uint_or_none(text, 65535)
    if not port:
        raise SshArgError(f"{what} {_show(text)} is not a TCP port")
    return port


def _user(text: str, what: str) -> str:
    if not re.fullmatch(_USER, text):
        raise SshArgError(f"{what} {_show(text)} is not a user name")
    return text


def _path(text: str, what: str) -> str:
    if "%" in text:  # ssh's %d/%u/... tokens in file names
        raise SshArgError(f"{what} {_show(text)}: % tokens are not supported")
    return os.path.expanduser(text)


def _unquote(value: str) -> str:
    """`-o 'ProxyCommand="ssh -W %h:%p bastion"'`: the quotes ssh_config syntax allows around a value."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _unsupported(option: str, meaning: str | None) -> str:
    what = f"{option} ({meaning})" if meaning else option
    return f"{what} is not supported by hosttune fleet (it would connect differently from ssh); remove it"


def _show(text: str, limit: int = 60) -> str:
    """A piece of the value for a message: quoted, shortened."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
