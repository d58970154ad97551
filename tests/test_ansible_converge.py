"""`hosttune converge`: playbooks through ansible-runner, the live view, artifacts, exit codes, Ctrl-C."""

from __future__ import annotations

import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from hosttune import converge
from hosttune.errors import HosttuneError
from tests.conftest import REPO
from tests.treegen import Spec, write_tree

pytest.importorskip("ansible_runner")

HOSTTUNE = os.path.join(os.path.dirname(sys.executable), "hosttune")
pytestmark = pytest.mark.skipif(not os.access(HOSTTUNE, os.X_OK), reason=f"no hosttune executable at {HOSTTUNE}")

SMALL = """\
- name: Small
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: "hello {{ who | default('world') }}"
    - name: Change something
      ansible.builtin.command: "true"
      changed_when: true
    - name: Fail when asked
      ansible.builtin.fail:
        msg: asked to fail
      when: fail_now | default(false)
"""


def converge_cli(tmp_path, *args, timeout=300):
    proc = subprocess.run([HOSTTUNE, "converge", *args, "--artifacts", str(tmp_path / "artifacts")],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    return proc


def events_of(artifacts_line: str) -> list[dict]:
    directory = artifacts_line.rsplit("artifacts: ", 1)[1].strip()
    events = []
    for path in glob.glob(os.path.join(directory, "job_events", "*.json")):
        with open(path) as f:
            events.append(json.load(f))
    return sorted(events, key=lambda e: e["counter"])


def test_converge_runs_a_playbook_through_ansible_runner(tmp_path):
    playbook = tmp_path / "small.yml"
    playbook.write_text(SMALL)
    proc = converge_cli(tmp_path, "-i", "localhost", str(playbook), "-e", "who=hosttune")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "PLAY Small" in err and "TASK Change something" in err
    assert "changed   localhost: Change something" in err
    assert "localhost     2       1      0           0       1" in err  # the recap: ok changed failed unr. skipped
    last = err.strip().splitlines()[-1]
    assert last.startswith("hosttune converge: successful (exit 0); artifacts: ")
    events = events_of(last)
    ok = [e for e in events if e["event"] == "runner_on_ok"]
    assert [e["event_data"]["task"] for e in ok] == ["Say hello", "Change something"]
    assert ok[0]["event_data"]["res"]["msg"] == "hello hosttune"  # -e reached the play
    assert ok[1]["event_data"]["res"]["changed"] is True
    directory = last.rsplit("artifacts: ", 1)[1]
    summary = json.load(open(os.path.join(directory, "hosttune-converge.json")))
    assert summary["rc"] == 0 and summary["hosts"]["localhost"]["changed"] == 1
    assert open(os.path.join(directory, "rc")).read().strip() == "0"


def test_converge_exit_code_and_recap_name_the_failed_host(tmp_path):
    playbook = tmp_path / "small.yml"
    playbook.write_text(SMALL)
    proc = converge_cli(tmp_path, "-i", "localhost", str(playbook), "-e", "fail_now=true")
    assert proc.returncode == 2, proc.stderr
    assert "FAILED    localhost: Fail when asked: asked to fail" in proc.stderr
    assert "failed: localhost" in proc.stderr
    assert "hosttune converge: failed (exit 2)" in proc.stderr


def test_converge_drives_a_stage_in_check_mode_on_a_synthetic_root(tmp_path):
    """tune.yml --check through converge: the roles' hosttune calls are dry runs on a --root tree."""
    root = write_tree(str(tmp_path / "host"), Spec())
    (tmp_path / "units").mkdir()
    extravars = {
        "hosttune_root": root, "hosttune_bin": HOSTTUNE, "hosttune_config": str(tmp_path / "etc" / "hosttune.yaml"),
        "hosttune_agent_install_method": "none", "hosttune_agent_packages": [], "hosttune_agent_systemd": False,
        "hosttune_agent_unit_dir": str(tmp_path / "units"), "hosttune_cpu_packages": [],
    }
    (tmp_path / "vars.yml").write_text(yaml.safe_dump(extravars))
    proc = converge_cli(tmp_path, "-i", "localhost", "tune", "--check", "--diff", "-e", f"@{tmp_path / 'vars.yml'}")
    assert proc.returncode == 0, proc.stderr
    assert "(check mode)" in proc.stderr.splitlines()[0]
    assert "changed   localhost: hosttune_cpu : Apply the CPU power settings" in proc.stderr
    assert "WARNING   localhost: localhost: a reboot is required" in proc.stderr
    events = events_of(proc.stderr.strip().splitlines()[-1])
    applied = [e for e in events if e["event"] == "runner_on_ok"
               and e["event_data"].get("task") == "Stage the kernel arguments with the boot loader"]
    assert applied and "--dry-run" in applied[0]["event_data"]["res"]["cmd"]
    assert not os.path.exists(os.path.join(root, "etc", "default", "grub.d", "hosttune.cfg"))


def test_converge_ctrl_c_cancels_cleanly(tmp_path):
    marker = f"{os.getpid() % 1000 + 1000}.{int(time.time()) % 100}"  # an unlikely sleep length to look for
    playbook = tmp_path / "sleepy.yml"
    playbook.write_text(f"""\
- name: Sleepy
  hosts: all
  gather_facts: false
  tasks:
    - name: Sleep a while
      ansible.builtin.command: sleep {marker}
      changed_when: false
""")
    proc = subprocess.Popen([HOSTTUNE, "converge", "-i", "localhost", str(playbook), "--artifacts",
                             str(tmp_path / "artifacts")], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "TASK Sleep a while" in line:
            break
    else:
        proc.kill()
        pytest.fail("the task never started:\n" + "".join(lines))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _sleepers(marker):
        time.sleep(0.2)
    assert _sleepers(marker), "the sleep did not start"
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == converge.EXIT_CANCELLED, "".join(lines) + rest
    assert "cancelling" in rest and "hosttune converge: cancelled; artifacts: " in rest
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _sleepers(marker):
        time.sleep(0.2)
    assert not _sleepers(marker), "the task's process outlived the cancel"


def _sleepers(marker: str) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] and proc.info["cmdline"][:2] == ["sleep", marker]:
            found.append(proc.pid)
    return found


# -- units -------------------------------------------------------------------------------------------
def test_parse_extra_vars_reads_values_as_yaml(tmp_path):
    path = tmp_path / "vars.yml"
    path.write_text("from_file: 1\nshared: file\n")
    got = converge.parse_extra_vars(["a=1 b=true c='[x, y]' d=text", '{"e": {"f": 2}, "shared": "json"}', f"@{path}"])
    assert got == {"a": 1, "b": True, "c": ["x", "y"], "d": "text", "e": {"f": 2}, "shared": "file", "from_file": 1}
    with pytest.raises(HosttuneError, match="NAME=VALUE"):
        converge.parse_extra_vars(["novalue"])
    with pytest.raises(HosttuneError, match="cannot read"):
        converge.parse_extra_vars([f"@{tmp_path / 'missing.yml'}"])


def test_resolves_stages_inventories_and_the_project(tmp_path):
    project = converge.find_project()
    assert project == REPO
    assert converge.find_playbook(project, "tune") == os.path.join(REPO, "playbooks", "tune.yml")
    assert converge.find_inventory(project, "example") == os.path.join(REPO, "inventory", "example")
    with pytest.raises(HosttuneError, match="a stage"):
        converge.find_playbook(project, "nonsense")
    with pytest.raises(HosttuneError, match="example, localhost"):
        converge.find_inventory(project, str(tmp_path / "nope"))
    with pytest.raises(HosttuneError, match="playbooks/site.yml"):
        converge.find_project(str(tmp_path))
    # the wheel carries no Ansible content: an installed hosttune uses the installed collection
    # (tests/test_packaging.py); the checkout's collections/ is what makes hosttune.tuning resolve here
    assert converge.collections_path(project) == os.path.join(REPO, "collections")


def _event(kind, host="h1", task="t", **data):
    return {"event": kind, "pid": 4242, "event_data": {"host": host, "task": task, **data}}


def test_progress_view_counts_and_the_recap_names_unreachable_hosts():
    out = io.StringIO()
    view = converge.Progress(out=out, tty=False)
    for event in [
        {"event": "playbook_on_play_start", "event_data": {"name": "Tune"}},
        {"event": "playbook_on_task_start", "event_data": {"task": "Apply", "role": "hosttune_cpu"}},
        _event("runner_on_ok", res={"changed": True, "warnings": ["reboot required"]}, role="hosttune_cpu"),
        _event("runner_on_ok", host="h2", res={"changed": False}),
        _event("runner_on_failed", host="h3", res={"msg": "apply failed (exit 1): hosttune: error: cpufreq: EBUSY"}),
        _event("runner_on_failed", host="h2", res={"msg": "ignored"}, ignore_errors=True),
        _event("runner_on_unreachable", host="h4", res={"msg": "Failed to connect to the host via ssh"}),
        _event("runner_on_skipped", host="h1"),
    ]:
        assert view.on_event(event) is True
    text = out.getvalue()
    assert "PLAY Tune" in text and "  TASK hosttune_cpu : Apply" in text
    assert "changed   h1: hosttune_cpu : t" in text and "WARNING   h1: reboot required" in text
    assert "FAILED    h3: t: apply failed (exit 1): hosttune: error: cpufreq: EBUSY" in text
    assert "UNREACHABLE h4: t: Failed to connect" in text
    assert view.hosts["h1"] == {"ok": 1, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 1}
    assert view.hosts["h2"]["ok"] == 2 and view.hosts["h2"]["failed"] == 0
    assert view.pid == 4242
    recap = converge.render_recap({"ok": {"h1": 1}, "failures": {"h3": 1}, "dark": {"h4": 1}}, view)
    assert "failed: h3" in recap and "unreachable: h4" in recap
    assert "h4: Failed to connect to the host via ssh" in recap


def test_converge_help_lists_the_stages():
    proc = subprocess.run([HOSTTUNE, "converge", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for stage in converge.STAGES:
        assert stage in proc.stdout


def test_command_module_imports_no_ansible_at_the_top():
    code = "import sys, hosttune.converge; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('ansible', 'ansible_runner', 'yaml', 'psutil')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
