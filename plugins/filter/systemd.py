# Copyright: hosttune contributors
# Apache License 2.0 (see LICENSE at the collection root)
# Quoting for systemd unit files (systemd.syntax(7), systemd.service(5) "Command lines",
# systemd.exec(5) Environment=). Shell quoting (the `quote` filter) is not systemd's: a newline in a
# value became a new directive, a space split a path, %h and $HOME were expanded by systemd.
# docs/security.md, "Values in systemd units".
"""hosttune.tuning.systemd_* filters: one implementation of systemd's quoting for the roles."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

# Filters (documented in docs/security.md): systemd_command (an argv list -> an ExecStart= value),
# systemd_quote (one argument), systemd_env (one Environment= assignment), systemd_escape (a value of
# a setting that only expands specifiers); the test hosttune.tuning.systemd_safe (plugins/test/)
# is systemd_safe below.

# C0, DEL and C1 control characters; also the Unicode line and paragraph separators
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# systemd refuses an executable path holding these ("Executable name contains special characters")
_UNSAFE_EXECUTABLE = re.compile(r"[\\\"']")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _text(value, what):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise AnsibleFilterError(f"{what}: a string or number is needed for a systemd unit, got "
                                 f"{type(value).__name__}")
    text = str(value)
    bad = _CONTROL.search(text)
    if bad:
        raise AnsibleFilterError(f"{what}: {text[:60]!r} holds the control character {bad.group()!r} "
                                 f"at {bad.start()}; a systemd unit value must not")
    return text


def systemd_escape(value, what="value"):
    """A value for a setting that expands specifiers but has no quoting (Description=, paths):
    % doubled."""
    return _text(value, what).replace("%", "%%")


def systemd_quote(value, what="argument", executable=False):
    """One word of a command line: double-quoted, backslash and quote escaped, % doubled, and $
    doubled unless it is the executable (systemd expands variables in the arguments only)."""
    text = _text(value, what).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if not executable:
        text = text.replace("$", "$$")
    return f'"{text}"'


def systemd_command(argv, what="command"):
    """An argv list -> the value of ExecStart= (argv[0] an absolute path)."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)) or not argv:
        raise AnsibleFilterError(f"{what}: a non-empty list of arguments is needed, got {type(argv).__name__}")
    first = _text(argv[0], f"{what}[0]")
    if not first.startswith("/") or _UNSAFE_EXECUTABLE.search(first):
        raise AnsibleFilterError(f"{what}[0]: the executable must be an absolute path without \\, \" or ', "
                                 f"got {first[:60]!r}")
    words = [systemd_quote(first, f"{what}[0]", executable=True)]
    words += [systemd_quote(arg, f"{what}[{i}]") for i, arg in enumerate(argv[1:], 1)]
    return " ".join(words)


def systemd_env(value, name=None, what="Environment"):
    """One Environment= assignment, quoted: `value | systemd_env('NAME')` or `'NAME=value' | systemd_env`.
    $ is literal there; % is doubled."""
    if name is None:
        name, sep, value = _text(value, what).partition("=")
        if not sep:
            raise AnsibleFilterError(f"{what}: NAME=value is needed, got {name[:60]!r}")
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise AnsibleFilterError(f"{what}: {str(name)[:60]!r} is not an environment variable name")
    text = _text(value, f"{what} {name}").replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{name}={text}"'


def systemd_executable(value):
    """True when `value` may be ExecStart's executable: an absolute path without control characters,
    backslash or quotes (systemd refuses those in the executable's name)."""
    return (isinstance(value, str) and value.startswith("/") and not _CONTROL.search(value)
            and not _UNSAFE_EXECUTABLE.search(value))


def systemd_safe(value):
    """True when a value (or every string inside a list or mapping) has no control character: for
    the roles' asserts, which run before any change."""
    if isinstance(value, dict):
        return all(systemd_safe(k) and systemd_safe(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(systemd_safe(v) for v in value)
    return not (isinstance(value, str) and _CONTROL.search(value))


class FilterModule:
    def filters(self):
        return {
            "systemd_escape": systemd_escape,
            "systemd_quote": systemd_quote,
            "systemd_command": systemd_command,
            "systemd_env": systemd_env,
        }
