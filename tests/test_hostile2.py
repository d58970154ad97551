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
    # the directories BindReadOnlyPaths= binds are plain paths (the role refuses others before any change)
    dropin = render_role_template("placement.conf.j2", inst=inst, hosttune_plan={"hostname": "h"},
                                  __hosttune_instances_serve_argv=[bin_path, *serve_args],
                                  __hosttune_instances_instance_dir="/etc/hosttune/instances/node0",
                                  __hosttune_instances_config_sha256="0" * 64, hosttune_instances_model_repo="/srv/models")
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
        args = ["serve", "--config_path", "/config/config.json", "--plan-instance", "node0", "--root", repo, value]
        unit, dropin = write_instance_units(str(base / "units"), str(exe), repo, args)
        proc = subprocess.run([analyze, "verify", "--man=no", str(base / "units" / "hosttune-instance@0.service")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "hosttune-instance" not in proc.stderr, (value, proc.stderr, dropin)
        keys = [k for k, _ in directives(dropin)]
        assert keys == ["ExecStart", "BindReadOnlyPaths", "BindReadOnlyPaths", "AllowedCPUs", "AllowedMemoryNodes",
                        "CPUAffinity", "NUMAPolicy", "NUMAMask", "Environment"], dropin
        (execstart,) = [v for k, v in directives(dropin) if k == "ExecStart"]
        assert exec_argv(execstart) == [str(exe)] + args
        (env,) = [v for k, v in directives(unit) if k == "Environment"]
        assert specifiers(systemd_words(env)[0], True) == "HOSTTUNE_MODEL_REPO=" + repo
        assert [k for k, _ in directives(unit)].count("ExecStart") == 0


def test_the_agent_unit_execstart_is_quoted_for_systemd():
    with open(os.path.join(REPO, "roles", "hosttune_agent", "vars", "main.yml")) as f:
        text = f.read()
    assert "hosttune.tuning.systemd_command" in text and "agent --root {{" not in text


# -- the roles, run: class 2 refused before any change, class 3 cleanup, class 9 check mode -----------
from tests.test_ansible import (base_vars, fake_docker, host, play, write_config,  # noqa: E402,F401
                                write_playbook)


@pytest.mark.parametrize("var, value", [
    ("hosttune_instances_model_repo", "/srv/models\nExecStartPre=/bin/touch /run/owned"),
    ("hosttune_instances_serve_extra_args", ["--root", "/srv\rx"]),
    ("hosttune_instances_args", ["--config_path", "/config/config.json\nExecStartPre=/bin/true"]),
    ("hosttune_bin", 'bin"/hosttune'),  # systemd refuses a quote in the executable's name
])
def test_a_value_systemd_cannot_hold_is_refused_before_any_change(tmp_path, host, base_vars, var, value):
    if var == "hosttune_bin":  # a real hosttune there, so that the plan before the check works
        value = str(tmp_path / value)
        os.makedirs(os.path.dirname(value))
        os.symlink(base_vars["hosttune_bin"], value)
    write_config(base_vars, {})
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    run = play(tmp_path, playbook, {**base_vars, var: value})
    assert run.rc != 0
    failed = run.failed()
    assert failed[0]["task"] == "Check the values that reach the unit files of each instance", failed
    assert "must not hold control characters" in json.dumps(failed[0]["res"])
    assert os.listdir(base_vars["hosttune_instances_unit_dir"]) == []


def test_ovms_cleanup_removes_only_what_hosttune_made_and_check_mode_says_what_it_removes(
        tmp_path, host, base_vars, fake_docker):
    bindir, state_file = fake_docker
    config_dir = base_vars["hosttune_instances_config_dir"]
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    extravars = {**base_vars, "hosttune_instances_kind": "ovms", "hosttune_instances_health_check": False}
    write_config(base_vars, {})
    first = play(tmp_path, playbook, extravars, extra_path=bindir)
    assert first.rc == 0, first.explain()
    assert sorted(json.loads(state_file.read_text())["containers"]) == ["hosttune-node0", "hosttune-node1"]
    assert sorted(os.listdir(config_dir)) == ["node0", "node1"]
    # another program's directories beside hosttune's: one named like a plan instance could be
    for foreign in ("foreign", "node7", ".hidden"):
        os.makedirs(os.path.join(config_dir, foreign, "sub"))
        with open(os.path.join(config_dir, foreign, "keep.txt"), "w") as f:
            f.write("not hosttune's\n")

    policy = {"instances": {"nodes": [1]}}
    write_config(base_vars, policy)
    extravars["hosttune_policy"] = policy
    check = play(tmp_path, playbook, extravars, check=True, extra_path=bindir)
    assert check.rc == 0, check.explain()
    would = [i for r in check.task("Report the containers check mode would remove") for i in r["res"].get("results", [])
             if not i.get("skipped")]
    assert [(i["changed"], "hosttune-node0" in i["msg"]) for i in would] == [(True, True)], would
    removal = [i for r in check.task("Remove the configuration of instances the plan no longer has")
               for i in r["res"].get("results", []) if i.get("changed")]
    assert [i["path"] for i in removal] == [os.path.join(config_dir, "node0")], removal
    assert sorted(json.loads(state_file.read_text())["containers"]) == ["hosttune-node0", "hosttune-node1"]
    assert os.path.isdir(os.path.join(config_dir, "node0"))

    real = play(tmp_path, playbook, extravars, extra_path=bindir)
    assert real.rc == 0, real.explain()
    assert sorted(json.loads(state_file.read_text())["containers"]) == ["hosttune-node1"]
    assert sorted(os.listdir(config_dir)) == [".hidden", "foreign", "node1", "node7"]
    assert not [c for c in real.changed() if "check mode would remove" in c], real.changed()

    remove = tmp_path / "remove.yml"
    remove.write_text(json.dumps([{"name": "remove", "hosts": "hosttune", "gather_facts": False, "tasks": [
        {"ansible.builtin.include_role": {"name": "hosttune.tuning.hosttune_instances", "tasks_from": "remove"}}]}]))
    check = play(tmp_path, str(remove), extravars, check=True, extra_path=bindir)
    assert check.rc == 0, check.explain()
    would = [r for r in check.task("Report the containers check mode would remove") if not r["res"].get("skipped")]
    assert would and would[0]["res"]["changed"]
    assert sorted(json.loads(state_file.read_text())["containers"]) == ["hosttune-node1"]
    gone = play(tmp_path, str(remove), extravars, extra_path=bindir)
    assert gone.rc == 0, gone.explain()
    assert json.loads(state_file.read_text())["containers"] == {}
    assert sorted(os.listdir(config_dir)) == [".hidden", "foreign", "node7"]
    for foreign in ("foreign", "node7", ".hidden"):
        assert open(os.path.join(config_dir, foreign, "keep.txt")).read() == "not hosttune's\n"
    # with only hosttune's directories in it, the configuration directory goes too
    for foreign in ("foreign", "node7", ".hidden"):
        shutil.rmtree(os.path.join(config_dir, foreign))
    assert play(tmp_path, str(remove), extravars, extra_path=bindir).rc == 0
    assert not os.path.exists(config_dir)


# -- class 5: numbers are ASCII digits ------------------------------------------------------------------
# '²' and '٣' pass str.isdigit(); int() reads '١' as 1, '３' as 3, and ' 3', '+3', '3_0' too
NOT_ASCII_NUMBERS = ["²", "١", "٣", "３", " 3", "+3", "3_0", "3 ", "-0", "0x3", "", "1" * 30]


@pytest.mark.parametrize("text", NOT_ASCII_NUMBERS)
def test_the_number_grammar_is_ascii_digits(text):
    assert numbers.uint_or_none(text) is None and not numbers.is_uint(text)
    assert numbers.int_or_none(text) is None or text == "-0"
    with pytest.raises(HosttuneError, match="ASCII digits"):
        numbers.parse_uint(text, "f")
    with pytest.raises(argparse.ArgumentTypeError):
        numbers.arg_uint()(text)
    with pytest.raises(argparse.ArgumentTypeError):
        numbers.arg_udecimal()(text)


def test_the_number_grammar_reads_ascii_numbers():
    assert numbers.uint_or_none("0042") == 42 and numbers.int_or_none("-1") == -1 and numbers.first_int("7 kB") == 7
    assert numbers.parse_uint("65535", "p", 1, 65535) == 65535 and numbers.arg_udecimal()("2.5") == 2.5
    for bad in ("65536", "0", "nan", "inf", "1e3", True, None, 3):
        with pytest.raises(HosttuneError):
            numbers.parse_uint(bad, "p", 1, 65535)


def test_no_number_site_reads_outside_text_with_isdigit_or_a_unicode_digit_class():
    """Every number read from outside goes through hosttune/numbers.py: no isdigit/isdecimal/
    isnumeric and no re \\d (which matches every Unicode digit) left in the package."""
    offenders = []
    for dirpath, _, files in os.walk(os.path.join(REPO, "hosttune")):
        for name in files:
            if name.endswith(".py") and name != "numbers.py" and not (name == "server.py" and dirpath.endswith("serve")):
                path = os.path.join(dirpath, name)
                for no, line in enumerate(open(path, encoding="utf-8"), 1):
                    code = line.split("#", 1)[0]
                    if re.search(r"\.is(digit|decimal|numeric)\(|\\d|type=(int|float)\b", code) and "re.ASCII" not in code:
                        offenders.append(f"{os.path.relpath(path, REPO)}:{no}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.fixture
def tree(tmp_path):
    return write_tree(str(tmp_path / "host"), Spec())


def test_discovery_ignores_names_and_values_that_are_not_ascii_numbers(tree):
    before = discovery.discover(HostFS(tree))
    for text in NOT_ASCII_NUMBERS:
        if text and "/" not in text:
            os.makedirs(os.path.join(tree, "proc/irq", text), exist_ok=True)
            os.makedirs(os.path.join(tree, "sys/devices/system/node", "node" + text), exist_ok=True)
    with open(os.path.join(tree, "proc/interrupts"), "a") as f:
        f.write("".join(f" {t}:  5  5  5  5  5  5  5  5  IO-APIC  9-fasteoi  evil\n" for t in NOT_ASCII_NUMBERS))
    for cpu in range(8):
        with open(os.path.join(tree, f"sys/devices/system/cpu/cpu{cpu}/topology/core_id"), "w") as f:
            f.write("١\n")
    topo = discovery.discover(HostFS(tree))
    assert [i.irq for i in topo.irqs] == [i.irq for i in before.irqs] and len(topo.irqs) == 16
    assert all(i.name != "evil" for i in topo.irqs)
    assert [n.id for n in topo.nodes] == [0, 1]
    assert all(c.core is None for c in topo.cpus)  # '١' is not core 1


def test_cpufreq_reads_a_unicode_digit_in_scaling_max_freq_as_unknown(tree):
    from tests.conftest import run_cli

    for path in glob_paths(tree, "sys/devices/system/cpu/cpufreq/policy*/scaling_max_freq"):
        with open(path, "w") as f:
            f.write("²\n")
    proc = run_cli("apply", "--root", tree, "--dry-run", "--only", "cpufreq")
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1, 3), proc.stderr
    assert "scaling_max_freq" in proc.stdout + proc.stderr


def glob_paths(root, pattern):
    import glob

    found = sorted(glob.glob(os.path.join(root, pattern)))
    assert found, pattern
    return found


def test_model_versions_are_ascii_directory_names(tmp_path):
    from hosttune.model.repo import versions

    for name in NOT_ASCII_NUMBERS + ["2", "0007", "99999999999"]:
        if name and "/" not in name:
            (tmp_path / "m" / name).mkdir(parents=True)
    (tmp_path / "m" / "5").write_text("a file, not a version")
    assert versions(str(tmp_path), "m") == [0, 2, 7] if (tmp_path / "m" / "0").exists() else [2, 7]


@pytest.mark.parametrize("text", NOT_ASCII_NUMBERS)
def test_numeric_options_refuse_unicode_digits(text, capsys):
    from hosttune.cli import build_parser

    parser = build_parser()
    for argv in (["serve", "--port", text], ["serve", "--rest_port", text], ["serve", "--nireq", text], ["serve", "--header-timeout", text],
                 ["serve", "--idle-poll-us", text], ["model", "check", "m", "--version", text],
                 ["fleet", "verify", "-i", "x", "--forks", text], ["fleet", "verify", "-i", "x", "--timeout", text]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 2, argv
        assert "Traceback" not in capsys.readouterr().err


def test_numeric_options_bounds(capsys):
    from hosttune.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--port", "65535", "--nireq", "4"]).grpc_port == 65535
    assert parser.parse_args(["serve", "--rest_port", "65535", "--nireq", "0"]).nireq == 0  # OVMS: 0 is the default
    for argv in (["serve", "--port", "65536"], ["serve", "--rest_port", "65536"], ["serve", "--nireq", "100000000"],
                 ["serve", "--file_system_poll_wait_seconds", "4294967296"], ["serve", "--grpc_workers", "0"],
                 ["serve", "--header-timeout", "inf"], ["serve", "--body-timeout", "nan"],
                 ["serve", "--max-body", "99999999999999999999"], ["fleet", "verify", "-i", "x", "--timeout", "1e99"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert "must be" in capsys.readouterr().err


@pytest.mark.parametrize("text", NOT_ASCII_NUMBERS)
def test_environment_and_inventory_numbers_are_ascii(text):
    from hosttune.sdnotify import Notifier
    from hosttune.fleet import sshargs

    assert Notifier({"WATCHDOG_USEC": text}).watchdog_usec == 0
    assert Notifier({"WATCHDOG_USEC": "3000000"}).watchdog_usec == 3000000
    with pytest.raises(sshargs.SshArgError, match="not a TCP port"):
        sshargs.parse(f"-p '{text}'")
    assert sshargs.parse("-p 2222").port == 2222


# -- class 7: numbers that overflow later ------------------------------------------------------------
@pytest.mark.parametrize("field", sorted(agent_config.BOUNDS))
@pytest.mark.parametrize("value", [10**10, 10**400, 1e300, -1, -0.5, math.nan, math.inf, -math.inf, True, False,
                                   "5", "٣", None, [5]])
def test_agent_numbers_out_of_bounds_are_refused_naming_the_field(field, value):
    lo, hi, zero = agent_config.BOUNDS[field]
    if value is False and zero:  # False is not 0
        pass
    with pytest.raises(PolicyError) as info:
        agent_config.validate_agent({field: value})
    assert info.value.where == f"agent.{field}" and "\n" not in str(info.value) and len(str(info.value)) < 200


@pytest.mark.parametrize("field", sorted(agent_config.BOUNDS))
def test_agent_numbers_at_their_bounds_are_accepted_and_cannot_overflow(field):
    import threading
    import time

    lo, hi, zero = agent_config.BOUNDS[field]
    for value in (lo, hi, int(hi)):
        assert getattr(agent_config.validate_agent({field: value}), field) == value
    # what the agent does with them: deadlines on the monotonic clock, waits and select timeouts
    assert hi <= threading.TIMEOUT_MAX and time.monotonic() + hi < 2**53
    with pytest.raises(PolicyError):
        agent_config.validate_agent({field: hi * 1.0001})


def test_a_huge_check_timeout_in_the_config_file_is_one_line_exit_2(tmp_path):
    from tests.conftest import run_cli

    tree = write_tree(str(tmp_path / "host"), Spec())
    cfg = tmp_path / "hosttune.yaml"
    cfg.write_text("agent: {check_timeout: 10000000000}\n")
    proc = run_cli("agent", "--foreground", "--root", tree, "--config", str(cfg))  # stops at start
    assert proc.returncode == 2 and "agent.check_timeout" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# -- class 9: collisions ------------------------------------------------------------------------------
def test_fleet_file_names_are_one_per_host(tmp_path):
    from hosttune.fleet import report
    from hosttune.fleet.ops import capture_file, file_stem

    hosts = ["node-ä", "node-ö", "node-_", "node-?", "node-/", "node-\n", ".node-_", "web1", "web1.example.com",
             "a" * 300, "a" * 301, "x+" + "0" * 12, "node-_+" + file_stem("node-ä").rsplit("+", 1)[1]]
    stems = [file_stem(h) for h in hosts]
    assert len(set(stems)) == len(hosts), stems
    assert all(re.fullmatch(r"[A-Za-z0-9._@+-]{1,220}", s) and not s.startswith(".") for s in stems), stems
    assert file_stem("web1") == "web1"  # a safe name stays itself
    assert len({capture_file(str(tmp_path), h) for h in hosts}) == len(hosts)
    doc = {"command": "plan", "hosts": [{"host": h, "result": {"who": h}} for h in hosts], "interrupted": False}
    try:
        written = report.write(doc, str(tmp_path / "out"))
    except (KeyError, TypeError):  # the HTML needs more of a real report: the plans are written first
        written = None
    plans = tmp_path / "out" / "plans"
    if written is None:
        os.makedirs(plans, exist_ok=True)
        for e in doc["hosts"]:
            (plans / (file_stem(e["host"]) + ".json")).write_text(json.dumps(e["result"]))
    assert sorted(json.loads(p.read_text())["who"] for p in plans.iterdir()) == sorted(hosts)


@pytest.mark.parametrize("name", ["vm.*", "net.ipv4.conf.*.rp_filter", "vm.swap*", "vm.?", "vm.[ab]", "*.x",
                                  "kernel.sched_*", "vm.swappiness\n", "vm.!x", "vm.x{a,b}"])
def test_sysctl_names_with_glob_characters_are_refused_at_validation(name):
    with pytest.raises(PolicyError) as info:
        policy.validate({"sysctls": {name: 1}})
    assert info.value.where.startswith("sysctls.") and "sysctl names" in str(info.value)
    assert policy.validate({"sysctls": {"net.ipv4.conf.eth0.rp_filter": 1}})["sysctls"]["net.ipv4.conf.eth0.rp_filter"] == 1


# -- root confinement ---------------------------------------------------------------------------------
def test_a_symlink_to_a_sibling_named_like_the_root_plus_a_suffix_is_outside(tree):
    evil = tree + "-evil"  # the same prefix: startswith(root) without a separator said "inside"
    os.makedirs(os.path.join(evil, "sysctl.d"))
    with open(os.path.join(evil, "secret"), "w") as f:
        f.write("5\n")
    swappiness = os.path.join(tree, "proc/sys/vm/swappiness")
    os.unlink(swappiness)
    os.symlink(os.path.join(evil, "secret"), swappiness)
    sysctl_d = os.path.join(tree, "etc/sysctl.d")
    if os.path.lexists(sysctl_d):
        shutil.rmtree(sysctl_d)
    os.makedirs(os.path.dirname(sysctl_d), exist_ok=True)
    os.symlink(os.path.join(evil, "sysctl.d"), sysctl_d)
    fs = HostFS(tree)
    assert fs.read("/proc/sys/vm/swappiness") is None
    with pytest.raises(OSError, match="out of the root"):
        fs.write("/proc/sys/vm/swappiness", "10")
    with pytest.raises(OSError):
        fs.write_file_atomic("/etc/sysctl.d/90-hosttune.conf", b"vm.swappiness = 10\n")
    assert fs.listdir("/etc/sysctl.d") is None
    assert open(os.path.join(evil, "secret")).read() == "5\n" and os.listdir(os.path.join(evil, "sysctl.d")) == []


def test_the_playbooks_refuse_a_value_systemd_cannot_hold_before_any_role_runs(tmp_path, host, base_vars):
    from tests.test_ansible import play as run_play

    write_config(base_vars, {})
    run = run_play(tmp_path, "site.yml", {**base_vars, "hosttune_config": base_vars["hosttune_config"] + "\nx=1"},
                   check=True)
    assert run.rc != 0
    failed = run.failed()
    assert failed[0]["task"] == "Check the values that reach systemd units", failed
    assert not run.changed()


@pytest.mark.parametrize("text", NOT_ASCII_NUMBERS + ["nan", "inf", "-inf", "1e999"])
def test_fleet_bench_numbers_are_ascii_and_finite(text):
    from hosttune.fleet.bench import _num

    assert _num(text) is None
    assert _num(math.nan) is None and _num(math.inf) is None and _num(10**400) is None and _num(True) is None
    assert _num("12.5") == 12.5 and _num(3) == 3.0
