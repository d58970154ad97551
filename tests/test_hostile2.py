"""Issue 32, second round of hostile input: each class tried as a class (every special character
of the output format at the start, middle and end of every value that reaches it), not one example.
The rules are in docs/security.md."""

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys

import jinja2
import pytest

from hosttune import discovery, numbers, policy
from hosttune.agent import config as agent_config
from hosttune.errors import HosttuneError, PolicyError
from hosttune.sysfs import HostFS
from tests.conftest import REPO
from tests.treegen import Spec, write_tree

# -- class 2: values in systemd units -----------------------------------------------------------------
_spec = importlib.util.spec_from_file_location("systemd_filters", os.path.join(REPO, "plugins", "filter", "systemd.py"))
sd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sd)

# every character systemd's unit syntax gives a meaning to (quoting, escapes, specifiers, variables,
# comments, command separators and prefixes, word splitting) and a few shell ones for good measure
SPECIAL = [" ", '"', "'", "\\", "%", "%h", "%i", "%%", "$", "$HOME", "${HOME}", "$$", ";", " ; ", "#", "=", "@", "-",
           "+", "!", ":", "`", "|", "&", "<", ">", "(", ")", "*", "?", "[", "]", "{", "}", "~", "\\n", "\\x41",
           "é", "\u00a0", "\u200b"]
CONTROL = ["\n", "\r", "\t", "\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028"]


def positions(special, base="ab"):
    return [special + base, base[0] + special + base[1:], base + special]


HOSTILE = [v for s in SPECIAL for v in positions(s)]


# A reading of systemd's rules (systemd.syntax(7), systemd.service(5) "Command lines"; the C is
# extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE), then specifiers, then $ at start-up).
_CESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
         "'": "'", "s": " "}


def systemd_words(line):
    words, i, n = [], 0, len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return words
        word, quote = "", None
        while i < n:
            c = line[i]
            if c == "\\":
                nxt = line[i + 1]
                if nxt == "x":
                    word += chr(int(line[i + 2:i + 4], 16))
                    i += 4
                    continue
                assert nxt in _CESC, f"unknown escape \\{nxt} in {line!r}"
                word += _CESC[nxt]
                i += 2
                continue
            if quote:
                if c == quote:
                    quote = None
                else:
                    word += c
            elif c in "\"'":
                quote = c
            elif c in " \t":
                break
            else:
                word += c
            i += 1
        assert quote is None, f"unbalanced quotes in {line!r}"
        words.append(word)


def specifiers(word, executable):
    """%% -> %, and for arguments $$ -> $; any other % or $ would be expanded by systemd: fail."""
    out = re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else pytest.fail(f"specifier %{m.group(1)} in {word!r}"), word)
    if not executable:
        assert not re.search(r"(?<!\$)\$(?!\$)", out.replace("$$", "")), f"variable in {word!r}"
        out = out.replace("$$", "$")
    return out


def exec_argv(value):
    words = systemd_words(value)
    assert words and words[0] != ";" and not [w for w in words if w == ";"]
    return [specifiers(w, i == 0) for i, w in enumerate(words)]


@pytest.mark.parametrize("value", HOSTILE)
def test_systemd_quoting_keeps_every_argument_whole(value):
    argv = ["/usr/bin/x", value, "--flag", value]
    line = sd.systemd_command(argv)
    assert "\n" not in line and exec_argv(line) == argv
    exe = "/opt/" + value
    if sd.systemd_executable(exe):
        assert exec_argv(sd.systemd_command([exe, value])) == [exe, value]
    else:  # systemd refuses \ " ' in an executable's name: so does the filter
        assert re.search(r"[\\\"']", value)
        with pytest.raises(sd.AnsibleFilterError, match="executable"):
            sd.systemd_command([exe])
    env = sd.systemd_env(value, "NAME")
    assert [specifiers(w, True) for w in systemd_words(env)] == ["NAME=" + value]


@pytest.mark.parametrize("control", CONTROL)
def test_systemd_filters_refuse_control_characters_anywhere(control):
    for value in positions(control):
        for call in (lambda: sd.systemd_command(["/bin/x", value]), lambda: sd.systemd_command(["/bin/" + value]),
                     lambda: sd.systemd_quote(value), lambda: sd.systemd_env(value, "A"), lambda: sd.systemd_escape(value)):
            with pytest.raises(sd.AnsibleFilterError, match="control character"):
                call()
        assert not sd.systemd_safe(["/ok", value]) and not sd.systemd_safe({"k": value})
    assert sd.systemd_safe(["/ok", "a b", "%h", "$x", 3])
    for bad in ([], "/bin/x", ["relative"], [None]):
        with pytest.raises(sd.AnsibleFilterError):
            sd.systemd_command(bad)
    with pytest.raises(sd.AnsibleFilterError):
        sd.systemd_env("v", "BAD NAME")


def render_role_template(name, **variables):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update({f"hosttune.tuning.{k}": v for k, v in sd.FilterModule().filters().items()})
    with open(os.path.join(REPO, "roles", "hosttune_instances", "templates", name)) as f:
        return env.from_string(f.read()).render(ansible_managed="managed", **variables)


def directives(text):
    return [line.split("=", 1) for line in text.splitlines() if line and not line.startswith(("#", "["))]


@pytest.fixture(scope="module")
def analyze():
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing (scripts/bootstrap installs systemd)"
    return tool


def write_instance_units(unit_dir, bin_path, repo, serve_args, model="sample"):
    inst = {"name": "node0", "node": 0, "cpus_list": "1-3", "mems_list": "0", "port": 9000, "bind": "127.0.0.1",
            "model": model}
    unit = render_role_template("hosttune-instance@.service.j2", hosttune_instances_model_repo=repo)
    dropin = render_role_template("placement.conf.j2", inst=inst, hosttune_plan={"hostname": "h"},
                                  hosttune_bin=bin_path, hosttune_instances_serve_args=serve_args)
    os.makedirs(os.path.join(unit_dir, "hosttune-instance@0.service.d"))
    with open(os.path.join(unit_dir, "hosttune-instance@.service"), "w") as f:
        f.write(unit)
    with open(os.path.join(unit_dir, "hosttune-instance@0.service.d", "placement.conf"), "w") as f:
        f.write(dropin)
    return unit, dropin


@pytest.mark.parametrize("special", SPECIAL)
def test_instance_units_rendered_with_hostile_values_pass_systemd_analyze_verify(tmp_path, analyze, special):
    """The role's real templates and filters, every special character at the start, middle and end
    of the executable's path, the model repository and a serve argument: systemd-analyze verify
    accepts the units (it finds the executable only when argv[0] is read back exactly), and the
    ExecStart argv and Environment read back are the values given."""
    for at, value in enumerate(positions(special)):
        base = tmp_path / str(at)
        exe_part = value.replace("/", "_")
        if not sd.systemd_executable("/x" + exe_part):  # systemd refuses \ " ' in an executable's name
            assert special in ("\\", '"', "'", "\\n", "\\x41")
            with pytest.raises(sd.AnsibleFilterError, match="executable"):
                sd.systemd_command(["/x" + exe_part])
            exe_part = exe_part.replace("\\", "_").replace('"', "_").replace("'", "_")
        bindir = base / exe_part
        bindir.mkdir(parents=True)
        exe = bindir / ("hosttune" + exe_part)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        repo = "/srv/" + value
        args = ["serve", "--repo", repo, "--plan-instance", "node0", value]
        unit, dropin = write_instance_units(str(base / "units"), str(exe), repo, args)
        proc = subprocess.run([analyze, "verify", "--man=no", str(base / "units" / "hosttune-instance@0.service")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "hosttune-instance" not in proc.stderr, (value, proc.stderr, dropin)
        keys = [k for k, _ in directives(dropin)]
        assert keys == ["ExecStart", "AllowedCPUs", "AllowedMemoryNodes", "CPUAffinity", "NUMAPolicy", "NUMAMask",
                        "Environment"], dropin
        (execstart,) = [v for k, v in directives(dropin) if k == "ExecStart"]
        assert exec_argv(execstart) == [str(exe)] + args
        (env,) = [v for k, v in directives(unit) if k == "Environment"]
        assert specifiers(systemd_words(env)[0], True) == "HOSTTUNE_MODEL_REPO=" + repo
        assert [k for k, _ in directives(unit)].count("ExecStart") == 0


def test_the_agent_unit_execstart_is_quoted_for_systemd():
    with open(os.path.join(REPO, "roles", "hosttune_agent", "vars", "main.yml")) as f:
        text = f.read()
    assert "hosttune.tuning.systemd_command" in text and "agent --root {{" not in text
