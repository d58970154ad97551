"""Read the hosts of an Ansible inventory, with their connection variables and policy.

Uses ansible-core's InventoryManager + VariableManager + DataLoader, so host patterns, groups,
group_vars/host_vars and Jinja templating behave exactly as they do for `ansible-playbook`.
Every value is templated with the host's variables and turned into plain Python types.

Errors in the inventory itself (unparsable file, bad `--limit`, undefined variable in a template)
raise HosttuneError (exit 2). A bad `hosttune_policy` is kept per host (`FleetHost.policy_error`),
naming the file and line where the offending value was defined, so `fleet plan` can report it
per host and `fleet verify` can refuse to start with one message.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from hosttune import numbers
from hosttune.errors import HosttuneError, PolicyError, PolicyErrors
from hosttune.fleet import sshargs
from hosttune.fleet.sshargs import SshArgError, SshArgs

DEFAULT_COMMAND = "hosttune"
DEFAULT_ROOT = "/"
POLICY_VAR = "hosttune_policy"
# a `hosttune tune -o` overlay on the controller: the roles make it the policy's tune_overlay
OVERLAY_VAR = "hosttune_tune_overlay"
SSH_CONNECTIONS = (None, "", "ssh", "smart", "paramiko", "paramiko_ssh")


@dataclass
class FleetHost:
    """One inventory host, with everything fleet needs to reach it and plan it."""

    name: str  # inventory_hostname
    address: str  # ansible_host (default: name)
    port: int | None = None  # ansible_port (None: ssh config / 22)
    user: str | None = None  # ansible_user (None: ssh config / local user)
    key_file: str | None = None  # ansible_ssh_private_key_file
    password: str | None = field(default=None, repr=False)  # ansible_password / ansible_ssh_pass
    connection: str | None = None  # ansible_connection
    command: str = DEFAULT_COMMAND  # hosttune_command: the remote executable (may be "sudo -n hosttune")
    ssh: SshArgs = field(default_factory=SshArgs)  # ansible_ssh_args/_common_args/_extra_args, parsed
    become: bool = False  # ansible_become: hosttune runs as become_user through sudo
    become_user: str = "root"  # ansible_become_user
    become_password: str | None = field(default=None, repr=False)  # ansible_become_password: sudo -S, on stdin
    root: str = DEFAULT_ROOT  # hosttune_root: passed as --root on the host
    groups: list[str] = field(default_factory=list)
    policy_raw: dict[str, Any] | None = None  # hosttune_policy as written (plain types), None if unset
    policy: dict[str, Any] | None = None  # validated policy, None if unset or invalid
    policy_source: str | None = None  # "group_vars/web.yml:2" where hosttune_policy was defined
    policy_error: PolicyError | None = None  # names the file/line and the dotted field

    @property
    def endpoint(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.address}{port}"

    def policy_message(self) -> str | None:
        return str(self.policy_error) if self.policy_error else None


def plain(value: Any) -> Any:
    """Ansible 2.19 hands out tagged subclasses of str/dict/list; turn them into plain types
    (so they can be dumped with yaml.safe_dump and compared exactly)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str.__str__(value) if type(value) is not str else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    return value


def origin(value: Any) -> tuple[str, int | None] | None:
    """(file, line) where a value from an inventory/vars file was defined, if ansible knows it."""
    try:  # ansible-core >= 2.19: data tagging
        from ansible._internal._datatag._tags import Origin  # type: ignore[import-not-found]

        tag = Origin.get_tag(value)
        if tag is not None and tag.path:
            return tag.path, tag.line_num
    except Exception:  # noqa: BLE001 - private API; absent or changed means "unknown"
        pass
    pos = getattr(value, "ansible_pos", None)  # ansible-core < 2.19: AnsibleBaseYAMLObject
    if pos and pos[0]:
        return pos[0], pos[1]
    return None


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("../..") else path


def _where(loc: tuple[str, int | None] | None) -> str | None:
    if not loc:
        return None
    path, line = loc
    return f"{_short(path)}:{line}" if line else _short(path)


def _locate_field(raw: Any, dotted: str | None) -> tuple[str, int | None] | None:
    """The origin of the deepest value (or key) along a dotted policy field path."""
    best = origin(raw)
    node = raw
    for part in (dotted or "").split("."):
        if not part or not isinstance(node, dict):
            break
        key = next((k for k in node if str(k) == part), None)
        if key is None:
            break
        best = origin(node[key]) or origin(key) or best
        node = node[key]
    return best


def _parse_failure(captured: str, source: str) -> str:
    """The useful line of ansible's parse warnings for `source` (yaml plugin for .yml, else ini)."""
    reasons: dict[str, str] = {}
    for match in re.finditer(r"Failed to parse inventory with '(\w+)' plugin: (.+)", captured):
        reasons.setdefault(match.group(1), match.group(2).strip())
    if not os.path.exists(source):
        return "no such inventory file or directory"
    for plugin in (("yaml", "auto", "ini") if source.endswith((".yml", ".yaml")) else ("ini", "yaml", "auto")):
        if plugin in reasons:
            return f"{plugin}: {reasons[plugin]}"
    return "not a valid inventory (ansible could not parse it)"


def load(sources: list[str], limit: str | None = None) -> list[FleetHost]:
    """The hosts of the inventory `sources` matching `limit`, in inventory order."""
    for source in sources:
        if "," not in source and not os.path.exists(source):
            raise HosttuneError("no such inventory file or directory", where=source)
    _import_ansible()
    from ansible import constants as C
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    C.INVENTORY_ANY_UNPARSED_IS_FAILED = True  # a broken inventory is an error, not an empty fleet
    captured = io.StringIO()  # ansible's display writes warnings to stderr: sort them (_replay_warnings)
    try:
        with contextlib.redirect_stderr(captured):
            loader = DataLoader()
            try:
                inventory = InventoryManager(loader=loader, sources=list(sources))
            except AnsibleError as exc:
                bad = next((s for s in sources if s in str(exc)), sources[0])
                raise HosttuneError(f"cannot parse inventory ({_parse_failure(captured.getvalue(), bad)})",
                                    where=bad) from None
            variables = VariableManager(loader=loader, inventory=inventory)
            try:
                if limit:
                    inventory.subset(limit)
                hosts = inventory.get_hosts("all")
            except AnsibleError as exc:
                raise HosttuneError(f"bad host pattern ({_first_line(exc)})", where="--limit") from None
            if not hosts:
                what = f"match --limit {limit!r}" if limit else "in the inventory"
                raise HosttuneError(f"no hosts {what}", where=", ".join(sources))
            result = [_host(h, variables, loader) for h in hosts]
    finally:
        _replay_warnings(captured.getvalue())
    return result


def _import_ansible() -> None:
    """Import ansible's config without its deprecation notices about ansible.cfg settings (printed
    at import time; they concern playbook runs, not the inventory fleet reads)."""
    if "ansible.constants" in sys.modules:
        return
    saved = os.environ.get("ANSIBLE_DEPRECATION_WARNINGS")
    os.environ["ANSIBLE_DEPRECATION_WARNINGS"] = "False"
    try:
        import ansible.constants  # noqa: F401
        import ansible.utils.display  # noqa: F401
    finally:
        if saved is None:
            del os.environ["ANSIBLE_DEPRECATION_WARNINGS"]
        else:
            os.environ["ANSIBLE_DEPRECATION_WARNINGS"] = saved


def _replay_warnings(text: str) -> None:
    """Pass ansible's own warnings on to stderr, less its deprecation notices (about ansible.cfg
    settings, not about the inventory) and the parse-failure chatter already in our message."""
    keep, skipping = [], False
    for block in re.split(r"\n(?=\[)", text.strip()):
        skipping = (block.startswith("[DEPRECATION WARNING]") or "Deprecation warnings can be disabled" in block
                    or "Failed to parse inventory" in block or "Could not match supplied host pattern" in block)
        if block.strip() and not skipping:
            keep.append(block.rstrip())
    if keep:
        print("\n".join(keep), file=sys.stderr)


def _host(host: Any, variables: Any, loader: Any) -> FleetHost:
    from ansible.errors import AnsibleError
    from ansible.template import Templar

    try:
        hostvars = variables.get_vars(host=host)
    except AnsibleError as exc:  # a group_vars/host_vars file that is not valid YAML
        raise HosttuneError(f"cannot read the variables of host {host.name} ({_first_line(exc)})",
                            where=_where(_error_origin(exc)) or "group_vars/host_vars") from None
    templar = Templar(loader=loader, variables=hostvars)

    def var(*names: str, default: Any = None) -> Any:
        for name in names:
            if name in hostvars and hostvars[name] is not None:
                raw = hostvars[name]
                try:
                    return plain(templar.template(raw))
                except AnsibleError as exc:
                    where = _where(origin(raw)) or f"host {host.name}"
                    raise HosttuneError(f"{name} of host {host.name}: {_first_line(exc)}", where=where) from None
        return default

    port = var("ansible_port", "ansible_ssh_port")
    if port is not None:
        # an int, or ASCII digits (int() would read '٣' as 3 and True as 1)
        number = port if type(port) is int else numbers.uint_or_none(port) if isinstance(port, str) else None
        if number is None or not 0 < number < 65536:
            raise HosttuneError(f"ansible_port of host {host.name} must be a TCP port, got {port!r}",
                                where=_where(origin(hostvars.get("ansible_port"))) or host.name)
        port = number
    key_file = var("ansible_ssh_private_key_file", "ansible_private_key_file")
    ssh = _ssh_args(host.name, hostvars, var)
    user = var("ansible_user", "ansible_ssh_user")
    fh = FleetHost(
        name=host.name,
        address=str(var("ansible_host", "ansible_ssh_host", default=host.name)),
        port=port if port is not None else ssh.port,  # ansible's -o Port comes before the user's args: it wins
        user=user if user is not None else ssh.user,
        key_file=os.path.expanduser(str(key_file)) if key_file else None,
        password=var("ansible_password", "ansible_ssh_pass"),
        connection=var("ansible_connection"),
        command=str(var("hosttune_command", default=DEFAULT_COMMAND)),
        root=str(var("hosttune_root", default=DEFAULT_ROOT)),
        groups=sorted(g.name for g in host.get_groups()),
        ssh=ssh,
    )
    if ssh.proxy_command:  # checked again with the user and port Fabric resolves, at connect time
        try:
            sshargs.expand_proxy_command(ssh.proxy_command, fh.address, fh.port or 22, fh.user or "user")
        except SshArgError as exc:
            raise _var_error("ansible_host", host.name, hostvars, str(exc)) from None
    _set_become(fh, hostvars, var)
    raw_policy = hostvars.get(POLICY_VAR)
    overlay = var(OVERLAY_VAR)
    if raw_policy is not None or overlay:
        # with an overlay, an unset hosttune_policy is {} as the roles write it
        _set_policy(fh, raw_policy if raw_policy is not None else {}, var, overlay or None)
    return fh


def _var_error(name: str, host: str, hostvars: Any, message: str) -> HosttuneError:
    """`<file:line>: <variable> of host <host>: <message>` (exit 2)."""
    return HosttuneError(f"{name} of host {host}: {message}", where=_where(origin(hostvars.get(name))) or host)


def _ssh_args(host: str, hostvars: Any, var: Any) -> SshArgs:
    """ansible_ssh_args, ansible_ssh_common_args, ansible_ssh_extra_args: in the order Ansible puts
    them on the ssh command line (for ssh, the first value of an option wins)."""
    args = SshArgs()
    for name in sshargs.VARIABLES:
        value = var(name)
        if value is None or value == "":
            continue
        try:
            sshargs.parse(value, args)
        except SshArgError as exc:
            raise _var_error(name, host, hostvars, str(exc)) from None
    return args


def _set_become(fh: FleetHost, hostvars: Any, var: Any) -> None:
    """ansible_become (+ _user, _method, _password): sudo only; unset or false: as the login user."""
    from ansible.module_utils.parsing.convert_bool import boolean

    try:
        fh.become = boolean(var("ansible_become", default=False), strict=True)
    except TypeError:
        raise _var_error("ansible_become", fh.name, hostvars, "must be a boolean "
                         f"(true/false), got {var('ansible_become')!r}") from None
    if not fh.become:
        return
    method = var("ansible_become_method", default="sudo")
    if method != "sudo":
        raise _var_error("ansible_become_method", fh.name, hostvars,
                         f"{method!r} is not supported by hosttune fleet (sudo only)")
    user = var("ansible_become_user", default="root")
    if not isinstance(user, str) or not re.fullmatch(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,63}", user):
        raise _var_error("ansible_become_user", fh.name, hostvars, f"{user!r} is not a user name")
    fh.become_user = user
    for name in ("ansible_become_password", "ansible_become_pass"):
        password = var(name)
        if password is None:
            continue
        try:  # it goes to sudo -S as one line: a line break would end it early
            text = str(password) if isinstance(password, (int, float)) else password  # YAML: 1234
            fh.become_password = sshargs.check_value(text, "the password")
        except SshArgError as exc:
            raise _var_error(name, fh.name, hostvars, str(exc)) from None
        break


def _set_policy(fh: FleetHost, raw_policy: Any, var: Any, overlay: Any = None) -> None:
    from hosttune import policy

    loc = origin(raw_policy)
    fh.policy_source = _where(loc)
    try:
        fh.policy_raw = var(POLICY_VAR, default={})
        if overlay is not None:  # as the roles do: the file's document is the policy's tune_overlay
            if not isinstance(overlay, str):
                raise PolicyError(f"must be the path of an overlay file, got {type(overlay).__name__}", where=OVERLAY_VAR)
            if isinstance(fh.policy_raw, dict):
                fh.policy_raw = {**fh.policy_raw, "tune_overlay": policy.load_overlay(os.path.expanduser(overlay))}
    except HosttuneError as exc:
        fh.policy_error = PolicyError(exc.message, where=exc.where)
        return
    try:
        fh.policy = policy.validate(fh.policy_raw, source=POLICY_VAR)
    except PolicyError as exc:
        found = []
        for error in getattr(exc, "errors", [exc]):  # PolicyErrors: every mistake, each where it is
            field_path = f"{POLICY_VAR}.{error.where}" if error.where else POLICY_VAR
            at = _where(_locate_field(raw_policy, error.where)) or fh.policy_source or f"host {fh.name}"
            found.append(PolicyError(f"{field_path}: {error.message}", where=at))
        fh.policy_error = found[0] if len(found) == 1 else PolicyErrors(found)


def _error_origin(exc: BaseException) -> tuple[str, int | None] | None:
    """The file/line an ansible error is about: its `obj` (an Origin, or a tagged value), or that of
    the exception it was raised from (host_group_vars re-raises YAML errors without the origin)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        obj = getattr(exc, "obj", None)
        if obj is not None:
            if getattr(obj, "path", None) and hasattr(obj, "line_num"):
                return obj.path, obj.line_num
            found = origin(obj)
            if found:
                return found
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def policy_errors(hosts: list[FleetHost]) -> str | None:
    """One message for every distinct policy error, naming the file/line, field and hosts."""
    by_message: dict[str, list[str]] = {}
    for h in hosts:
        if h.policy_error:
            by_message.setdefault(str(h.policy_error), []).append(h.name)
    if not by_message:
        return None
    lines = [f"{line} (hosts: {', '.join(names)})" for msg, names in by_message.items() for line in msg.splitlines()]
    return "invalid hosttune_policy in the inventory: " + ("\n  ".join([""] + lines) if len(lines) > 1 else lines[0])
