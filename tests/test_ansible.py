"""The Ansible roles and playbooks: lint (production profile), syntax, argument specs, and real runs
against this machine (ansible_connection=local) that only ever touch temporary directories.

Every hosttune call the roles make gets `--root <a synthetic 2-node tree>` (hosttune_root), the
configuration file, unit files and venv go to tmp_path, packages are not installed and systemd is
not called (hosttune_*_systemd: false), Docker is a fake CLI on PATH. So nothing here changes this
machine's boot configuration or tuning.
"""

from __future__ import annotations

import glob
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.test_areas import standins  # noqa: F401 - fixture
from tests.test_quirks import _with_tuned
from tests.treegen import Spec, write_tree

pytest.importorskip("ansible_runner")

VENV_BIN = os.path.dirname(sys.executable)
HOSTTUNE = os.path.join(VENV_BIN, "hosttune")
IMAGE = "openvino/model_server:2025.3"  # a pinned tag (the role refuses latest)
PLAYBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "playbooks")) if f.endswith(".yml"))
ROLES = sorted(d for d in os.listdir(os.path.join(REPO, "roles")) if not d.startswith("."))

pytestmark = pytest.mark.skipif(not os.access(HOSTTUNE, os.X_OK), reason=f"no hosttune executable at {HOSTTUNE}")


# -- running playbooks -----------------------------------------------------------------------------
class Run:
    """An ansible-runner run, read back from its artifact directory: rc, status, events, and a few
    views of them."""

    def __init__(self, artifact_dir: str, private: str):
        def text(name: str) -> str | None:
            path = os.path.join(artifact_dir, name)
            if not os.path.exists(path):
                return None
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()

        rc = (text("rc") or "").strip()
        self.rc = int(rc) if rc.lstrip("-").isdigit() else None
        self.status = (text("status") or "").strip() or None
        events = []
        for path in glob.glob(os.path.join(artifact_dir, "job_events", "*.json")):
            with open(path, encoding="utf-8") as f:
                events.append(json.load(f))
        self.events = sorted(events, key=lambda e: e.get("counter", 0))
        # the recap: ok, changed, dark, failures, ... per host
        self.stats = next((e["event_data"] for e in self.events if e.get("event") == "playbook_on_stats"), {})
        self.private = private
        self.stdout = text("stdout") or ""

    def results(self, kinds=("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped")):
        return [e for e in self.events if e["event"] in kinds]

    def changed(self) -> list[str]:
        return [f"{e['event_data'].get('role')}: {e['event_data']['task']}" for e in self.results(("runner_on_ok",))
                if e["event_data"]["res"].get("changed")]

    def failed(self) -> list[dict[str, Any]]:
        return [e["event_data"] for e in self.results(("runner_on_failed",))
                if not e["event_data"].get("ignore_errors")]

    def task(self, name: str) -> list[dict[str, Any]]:
        """event_data of the results of tasks whose name contains `name`."""
        return [e["event_data"] for e in self.results() if name in e["event_data"].get("task", "")]

    def skipped(self, name: str) -> bool:
        return any(name in e["event_data"].get("task", "") for e in self.results(("runner_on_skipped",)))

    def warnings(self) -> list[str]:
        out = []
        for e in self.results(("runner_on_ok",)):
            for w in e["event_data"]["res"].get("warnings") or []:
                out.append(w.get("message") if isinstance(w, dict) else str(w))
        return out

    def explain(self) -> str:
        return f"rc={self.rc} status={self.status}\n{self.stdout[-6000:]}"


def message(data: dict[str, Any]) -> str:
    """A failed result's messages, its loop items' included."""
    res = data.get("res", data)
    parts = [str(res.get("msg", ""))]
    parts += [str(item.get("msg", "")) for item in res.get("results") or [] if isinstance(item, dict)]
    return "\n".join(parts)


def ansible_env(extra_path: str | None = None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (extra_path, VENV_BIN, os.environ.get("PATH", "")) if p)
    return {
        "ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": path,
    }


def play(tmp_path, playbook: str, extravars: dict[str, Any], check=False, diff=False, inventory=None,
         extra_path=None, limit=None, tags=None) -> Run:
    """Run a playbook (a path, or a name under playbooks/) with ansible-runner against localhost.

    ansible-runner runs in a fresh interpreter, not in this pytest worker: its pexpect forks the
    calling process and runs Python in the child before the exec, and a worker that has loaded
    threaded native libraries (OpenVINO, TVM, ...) can crash or hang in that child."""
    if not os.path.isabs(playbook):
        playbook = os.path.join(REPO, "playbooks", playbook)
    index = len([d for d in os.listdir(tmp_path) if d.startswith("runner")])
    private = str(tmp_path / f"runner{index}")
    os.makedirs(private)
    flags = " ".join(f for f, on in (("--check", check), ("--diff", diff)) if on)
    kwargs = dict(private_data_dir=private, project_dir=REPO, playbook=playbook, ident="run",
                  inventory=inventory or os.path.join(REPO, "inventory", "localhost"),
                  extravars=extravars, envvars=ansible_env(extra_path), quiet=True)
    if flags:
        kwargs["cmdline"] = flags
    if limit:
        kwargs["limit"] = limit
    if tags:
        kwargs["tags"] = tags
    proc = subprocess.run([sys.executable, "-c", RUNNER_CHILD], input=json.dumps(kwargs), text=True,
                          capture_output=True, timeout=1800)
    assert proc.returncode == 0, f"ansible-runner itself failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return Run(os.path.join(private, "artifacts", "run"), private)


# The child: one ansible_runner.run() with the keyword arguments read as JSON from stdin.
RUNNER_CHILD = "import json, sys, ansible_runner; ansible_runner.run(**json.load(sys.stdin))"


def write_playbook(tmp_path, name: str, roles: list[str], gather_facts=False) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump([{"name": f"Test {name}", "hosts": "hosttune", "gather_facts": gather_facts,
                                     "roles": [{"role": f"hosttune.tuning.{r}"} for r in roles]}], sort_keys=False))
    return str(path)


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def host(tmp_path):
    """A synthetic 2-socket host tree (2 nodes x 4 cores, intel_pstate, 16 IRQs)."""
    return write_tree(str(tmp_path / "host"), Spec())


@pytest.fixture
def base_vars(tmp_path, host):
    """Role variables that keep every run inside tmp_path."""
    units = tmp_path / "units"
    units.mkdir()
    (tmp_path / "bin").mkdir()
    return {
        "hosttune_root": host,
        "hosttune_bin": HOSTTUNE,
        "hosttune_config": str(tmp_path / "etc" / "hosttune.yaml"),
        "hosttune_policy": {},
        "hosttune_agent_install_method": "none",
        "hosttune_agent_packages": [],
        "hosttune_agent_systemd": False,
        "hosttune_agent_unit_dir": str(units),
        # not /usr/local/bin: tests running side by side would take the link from each other
        "hosttune_agent_link": str(tmp_path / "bin" / "hosttune"),
        "hosttune_cpu_packages": [],
        "hosttune_irq_packages": [],
        "hosttune_instances_kind": "systemd",
        "hosttune_instances_unit_dir": str(units),
        "hosttune_instances_config_dir": str(tmp_path / "instances"),
        "hosttune_instances_image": IMAGE,
        "hosttune_instances_systemd": False,
        "hosttune_bench_enabled": False,
        "hosttune_verify_instances": False,
        "hosttune_restore_agent": False,  # no systemd on this machine
    }


def tree_digest(root: str) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            digest.update(path.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def read(root: str, path: str) -> str:
    with open(os.path.join(root, path.lstrip("/"))) as f:
        return f.read().strip()


def plan_of(root: str, policy: dict | None = None, tmp_path=None) -> dict[str, Any]:
    argv = [HOSTTUNE, "plan", "--root", root, "--json"]
    if policy is not None:
        path = tmp_path / "policy-for-plan.yaml"
        path.write_text(yaml.safe_dump({"policy": policy}))
        argv += ["--policy", str(path)]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


# -- static checks ---------------------------------------------------------------------------------
def test_ansible_lint_production_profile_is_clean():
    lint = os.path.join(VENV_BIN, "ansible-lint")
    assert os.access(lint, os.X_OK), f"{lint} is missing: scripts/bootstrap installs the test extra"
    # ~70 CPU-s. In a session of its own: scripts/test runs pytest at autogroup nice 10 so the unit
    # tests yield to the QEMU guests, and there this one lint got so little CPU beside two busy
    # guests that it ran into its timeout (> 600 s for what takes ~2 minutes at nice 0)
    proc = subprocess.run([lint, "--profile", "production", "--nocolor", "roles", "playbooks",
                           *sorted(glob.glob("molecule/resources/*.yml", root_dir=REPO))], cwd=REPO,
                          capture_output=True, text=True, timeout=1200, start_new_session=True,
                          env={**os.environ, **ansible_env(), "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


@pytest.mark.parametrize("inventory", ["example", "localhost"])
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook, inventory):
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "--syntax-check", "-i",
                           os.path.join(REPO, "inventory", inventory), os.path.join(REPO, "playbooks", playbook)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **ansible_env()})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_role_has_meta_and_argument_specs():
    for role in ROLES:
        meta = yaml.safe_load(open(os.path.join(REPO, "roles", role, "meta", "main.yml")))
        assert meta["galaxy_info"]["role_name"] == role
        specs = yaml.safe_load(open(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml")))
        options = specs["argument_specs"]["main"]["options"]
        defaults_path = os.path.join(REPO, "roles", role, "defaults", "main.yml")
        defaults = yaml.safe_load(open(defaults_path)) if os.path.exists(defaults_path) else {}
        for name in defaults:
            assert name.startswith(f"{role}_"), f"{role}: public variable {name} lacks the role prefix"
            documented = name in options or name in ("hosttune_instances_args", "hosttune_instances_container_extra_args",
                                                      "hosttune_instances_serve_extra_args")
            assert documented, f"{role}: {name} is not in meta/argument_specs.yml"
        for name, spec in options.items():
            assert spec.get("description"), f"{role}: {name} has no description"
            assert spec.get("type"), f"{role}: {name} has no type"


def test_every_area_is_applied_by_one_role_in_registry_order():
    """The tuning roles between them apply every area of the registry, each area in one role;
    hosttune_cpu lists its areas as hosttune applies them (managers before the CPU areas: tuned /
    power-profiles-daemon stopped before the values they rewrite)."""
    from hosttune import areas

    lists = {}
    for role in ("hosttune_cpu", "hosttune_irq"):
        defaults = yaml.safe_load(open(os.path.join(REPO, "roles", role, "defaults", "main.yml")))
        spec = yaml.safe_load(open(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml")))
        option = spec["argument_specs"]["main"]["options"][f"{role}_areas"]
        assert defaults[f"{role}_areas"] == option["default"] == option["choices"], role
        lists[role] = defaults[f"{role}_areas"]
    kernel = yaml.safe_load(open(os.path.join(REPO, "roles", "hosttune_kernel", "tasks", "main.yml")))
    lists["hosttune_kernel"] = next(t["hosttune.tuning.apply"]["areas"] for t in kernel if "hosttune.tuning.apply" in t)
    applied = [a for names in lists.values() for a in names]
    assert sorted(applied) == sorted(areas.NAMES), lists  # every area, none twice
    cpu = lists["hosttune_cpu"]
    assert cpu == [a for a in areas.NAMES if a in cpu] and cpu[0] == "managers", cpu


def test_cpu_role_stops_tuned_before_the_cpu_settings(tmp_path, host, base_vars, standins):
    """hosttune_cpu applies `managers` (no other role does): a running tuned is stopped and disabled
    through systemctl (a stand-in here), in the same apply and before the CPU areas' changes."""
    folder, log = standins
    _with_tuned(host)
    (folder / "systemctl.json").write_text(json.dumps({"tuned": {"active": True, "enabled": True}}))
    write_config(base_vars, {})
    run = play(tmp_path, write_playbook(tmp_path, "cpu.yml", ["hosttune_cpu"]), base_vars)
    assert run.rc == 0, run.explain()
    res = run.task("Apply the CPU power settings")[0]["res"]
    assert "managers" in res["cmd"][res["cmd"].index("--only"):]
    areas_changed = [c["area"] for c in res["changes"]]
    assert areas_changed[0] == "managers" and "cpufreq" in areas_changed, areas_changed
    assert json.loads((folder / "systemctl.json").read_text())["tuned"] == {"active": False, "enabled": False}
    assert ["systemctl", "disable", "--now", "tuned"] in log()


def test_example_inventory_policies_are_valid_hosttune_policies(tmp_path, host):
    """Each hardware class's hosttune_policy plans on a 2-node host (hosttune validates it)."""
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-inventory"), "-i", os.path.join(REPO, "inventory", "example"),
                           "--list"], capture_output=True, text=True, check=True, env={**os.environ, **ansible_env()})
    inv = json.loads(proc.stdout)
    classes = inv["hosttune"]["children"]
    assert {"xeon_2s", "epyc_4n"} <= set(classes)
    for group in classes:
        first = inv[group]["hosts"][0]
        policy = inv["_meta"]["hostvars"][first]["hosttune_policy"]
        plan = plan_of(host, policy, tmp_path)
        assert plan["instances"], group


# -- argument validation and policy errors ---------------------------------------------------------
@pytest.mark.parametrize("bad, named", [
    ({"hosttune_kernel_reboot_ok": "maybe"}, "hosttune_kernel_reboot_ok"),
    ({"hosttune_instances_kind": "podman"}, "hosttune_instances_kind"),
    ({"hosttune_policy": "latency"}, "hosttune_policy"),
    ({"hosttune_agent_options": {"intervall": 5}}, "hosttune_agent_options.intervall"),
    ({"hosttune_cpu_areas": ["cpufreq", "gpu"]}, "hosttune_cpu_areas"),
    ({"hosttune_instances_args": "--nireq 4"}, "hosttune_instances_args"),
    ({"hosttune_instances_serve_extra_args": {"--bind": "0.0.0.0"}}, "hosttune_instances_serve_extra_args"),
    # retired: one list of OVMS flags for both kinds replaced them, said by name
    ({"hosttune_instances_container_args": ["--rest_port", "9000"]},
     "hosttune_instances_container_args and hosttune_instances_serve_args are retired"),
])
def test_bad_variable_fails_in_validation_before_any_change(tmp_path, host, base_vars, bad, named):
    before = tree_digest(host)
    run = play(tmp_path, "site.yml", {**base_vars, **bad})
    assert run.rc != 0, run.explain()
    failed = run.failed()
    assert len(failed) == 1, run.explain()
    assert named in message(failed[0]), message(failed[0])
    # the very first task of the play after gathering facts: nothing ran, nothing changed
    assert failed[0]["role"] == "hosttune", failed[0]["task"]
    assert run.changed() == []
    roles_that_ran = {e["event_data"].get("role") for e in run.results()} - {None, "hosttune"}
    assert roles_that_ran == set()
    assert not os.path.exists(base_vars["hosttune_config"])
    assert tree_digest(host) == before


# three mistakes of different kinds: a bad choice, an unknown key in a section, a field's own check
THREE_MISTAKES = {"profile": "fast", "cpufreq": {"governer": "performance"}, "instances": {"base_port": 70000}}
THREE_MISTAKES_SAID = ["hosttune_policy.profile: must be one of latency, throughput, got 'fast'",
                       "hosttune_policy.cpufreq.governer: unknown key (known: ",
                       "hosttune_policy.instances.base_port: must be a TCP port (1-65535), got 70000"]


@pytest.mark.parametrize("playbook", ["site.yml", "verify.yml"])
def test_every_policy_mistake_fails_on_the_controller_before_any_change(tmp_path, host, base_vars, playbook):
    """hosttune's own validator, run on the controller by the playbooks' up-front validation (from
    this checkout here; from the collection's wheel in test_collection.py): all three mistakes in one
    failure, each naming hosttune_policy.<field>; no role ran, nothing changed, nothing written."""
    before = tree_digest(host)
    run = play(tmp_path, playbook, {**base_vars, "hosttune_policy": THREE_MISTAKES})
    assert run.rc != 0, run.explain()
    failed = run.failed()
    assert len(failed) == 1, run.explain()
    assert failed[0]["role"] == "hosttune" and failed[0]["task"] == "Refuse a policy with mistakes", failed[0]
    lines = failed[0]["res"]["msg"].splitlines()
    assert len(lines) == 3 and all(line.startswith(said) for line, said in zip(lines, THREE_MISTAKES_SAID)), lines
    assert run.changed() == []
    assert {e["event_data"].get("role") for e in run.results()} - {None, "hosttune"} == set()
    assert not os.path.exists(base_vars["hosttune_config"])
    assert tree_digest(host) == before


def test_a_policy_that_does_not_fit_the_host_fails_with_hosttunes_own_message(tmp_path, host, base_vars):
    """A right policy that cannot be planned on this host (4 housekeeping cores of 4) passes the
    controller's check; the host's `hosttune plan` refuses it before the configuration is written."""
    before = tree_digest(host)
    run = play(tmp_path, "tune.yml", {**base_vars, "hosttune_policy": {"housekeeping": {"cores_per_node": 4}}})
    assert run.rc != 0, run.explain()
    failed = run.failed()
    assert len(failed) == 1, run.explain()
    assert failed[0]["role"] == "hosttune_agent" and failed[0]["task"] == "Check the policy with hosttune"
    msg = failed[0]["res"]["msg"]
    assert "housekeeping.cores_per_node: 4 >= the 4 core(s) of node 0" in msg and "hosttune: error:" in msg, msg
    assert not os.path.exists(base_vars["hosttune_config"]), "a bad policy must not be written"
    assert tree_digest(host) == before


# -- tuning ----------------------------------------------------------------------------------------
def test_tune_check_diff_reports_changes_and_changes_nothing(tmp_path, host, base_vars):
    before = tree_digest(host)
    run = play(tmp_path, "tune.yml", base_vars, check=True, diff=True)
    assert run.rc == 0, run.explain()
    changed = run.changed()
    for task in ("hosttune_kernel: Stage the kernel arguments", "hosttune_cpu: Apply the CPU power settings",
                 "hosttune_irq: Apply the IRQ, irqbalance, sysctl and THP settings"):
        assert any(c.startswith(task) for c in changed), (task, changed)
    cpu = run.task("Apply the CPU power settings")[0]["res"]
    assert "--dry-run" in cpu["cmd"] and cpu["result"]["dry_run"] is True
    assert cpu["changes"] and "governor" in cpu["diff"]["after"]
    irq = run.task("Apply the IRQ, irqbalance")[0]["res"]
    assert "vm.swappiness" in irq["diff"]["before"] and "vm.swappiness" in irq["diff"]["after"]
    assert any("a reboot is required" in w and "check mode" in w for w in run.warnings()), run.warnings()
    assert tree_digest(host) == before
    assert not os.path.exists(base_vars["hosttune_config"])


def test_tune_applies_then_second_run_changes_nothing(tmp_path, host, base_vars):
    run = play(tmp_path, "tune.yml", base_vars)
    assert run.rc == 0, run.explain()
    assert run.changed(), run.explain()
    assert read(host, "/proc/sys/vm/swappiness") == "10"
    assert "isolcpus=managed_irq,domain,1-3,5-7" in read(host, "/etc/default/grub.d/hosttune.cfg")
    config = yaml.safe_load(open(base_vars["hosttune_config"]))
    assert config == {"policy": {}, "agent": {}}
    unit = open(os.path.join(base_vars["hosttune_agent_unit_dir"], "hosttune-agent.service")).read()
    assert f'ExecStart="{HOSTTUNE}" "agent" "--root" "{host}" "--config" "{base_vars["hosttune_config"]}"\n' in unit
    assert "Type=notify" in unit
    # not the live root: no reboot, the fact says a reboot is required, a warning says why
    assert any("Not rebooting: hosttune_root is" in w for w in run.warnings()), run.warnings()
    reboot = run.task("Record whether a reboot is still required")[0]["res"]
    assert reboot["ansible_facts"]["hosttune_kernel_reboot_required"] is True
    assert run.skipped("Reboot into the new kernel arguments")

    again = play(tmp_path, "tune.yml", base_vars)
    assert again.rc == 0, again.explain()
    assert again.changed() == [], again.changed()

    check = play(tmp_path, "tune.yml", base_vars, check=True)
    assert check.rc == 0 and check.changed() == [], check.changed()


def test_kernel_role_asserts_cmdline_and_isolated_cpus_against_the_plan(tmp_path, host, base_vars):
    plan = plan_of(host)
    # as if the host had rebooted into the planned arguments
    with open(os.path.join(host, "proc/cmdline"), "w") as f:
        f.write("BOOT_IMAGE=/vmlinuz root=/dev/vda1 " + " ".join(plan["kernel_args"]) + "\n")
    with open(os.path.join(host, "sys/devices/system/cpu/isolated"), "w") as f:
        f.write("1-3,5-7\n")
    run = play(tmp_path, "tune.yml", base_vars)
    assert run.rc == 0, run.explain()
    check = "Check that the running kernel has the planned arguments and isolation"
    msg = run.task(check)[0]["res"]["msg"]
    assert "running kernel command line" in msg and "isolated CPUs" in msg and msg.endswith("as planned"), msg

    with open(os.path.join(host, "sys/devices/system/cpu/isolated"), "w") as f:
        f.write("1-3\n")
    run = play(tmp_path, "tune.yml", base_vars)
    assert run.rc != 0
    failed = run.failed()
    assert failed[0]["task"] == check
    assert "isolated CPUs is 1-3 (drift; planned 1-3,5-7)" in failed[0]["res"]["msg"], failed[0]["res"]["msg"]


def test_verify_fails_on_drift_naming_the_setting_and_restore_puts_values_back(tmp_path, host, base_vars):
    swappiness = read(host, "/proc/sys/vm/swappiness")
    assert play(tmp_path, "tune.yml", base_vars).rc == 0
    ok = play(tmp_path, "verify.yml", base_vars)
    assert ok.rc == 0, ok.explain()
    assert "pending-reboot" in ok.task("Report the verification")[0]["res"]["msg"]

    with open(os.path.join(host, "proc/sys/vm/swappiness"), "w") as f:
        f.write("60\n")
    drift = play(tmp_path, "verify.yml", base_vars)
    assert drift.rc != 0
    msg = drift.failed()[0]["res"]["msg"]
    assert "vm.swappiness (expected 10, actual 60)" in msg, msg

    strict = play(tmp_path, "verify.yml", {**base_vars, "hosttune_verify_allow_pending_reboot": False})
    assert strict.rc != 0

    restored = play(tmp_path, "restore.yml", base_vars)
    assert restored.rc == 0, restored.explain()
    assert read(host, "/proc/sys/vm/swappiness") == swappiness
    assert not os.path.exists(os.path.join(host, "etc/default/grub.d/hosttune.cfg"))
    assert "stay active until the next reboot" in restored.task("Say that a reboot is still needed")[0]["res"]["msg"]


# -- instances -------------------------------------------------------------------------------------
FAKE_DOCKER = r'''#!/usr/bin/env python3
"""A fake docker CLI: containers live in $FAKE_DOCKER_STATE (JSON)."""
import json, os, sys
path = os.environ["FAKE_DOCKER_STATE"]
try:
    state = json.load(open(path))
except FileNotFoundError:
    state = {"containers": {}, "images": {}, "log": []}
argv = sys.argv[1:]
state["log"].append(argv)
rc = 0
def emit(obj):
    print(json.dumps(obj))
if argv[:1] == ["version"]:
    print("Server: fake")
elif argv[:2] == ["image", "inspect"]:
    if argv[2] in state["images"]:
        emit([{"Id": state["images"][argv[2]]}])
    else:
        print("Error: No such image: " + argv[2], file=sys.stderr); rc = 1
elif argv[:1] == ["pull"]:
    state["images"][argv[1]] = "sha256:" + "1" * 64
    print("Status: Downloaded newer image for " + argv[1])
elif argv[:2] == ["container", "inspect"]:
    found = [c for c in state["containers"].values() if c["Id"] in argv[2:] or c["Name"][1:] in argv[2:]]
    if len(found) != len(argv[2:]):
        print("Error: No such container", file=sys.stderr); rc = 1
    else:
        emit(found)
elif argv[:2] == ["container", "ls"]:
    for c in state["containers"].values():
        if "hosttune.instance" in c["Config"]["Labels"]:
            print(c["Id"])
elif argv[:1] == ["rm"]:
    for ref in argv[1:]:
        for key, c in list(state["containers"].items()):
            if ref in (c["Id"], c["Name"][1:]):
                del state["containers"][key]
elif argv[:1] == ["run"]:
    opts, labels, i = {}, {}, 1
    while argv[i].startswith("-"):
        if argv[i] in ("--detach", "--read-only"):
            opts[argv[i]] = [True]; i += 1; continue
        if argv[i] == "--label":
            key, _, value = argv[i + 1].partition("="); labels[key] = value
        opts.setdefault(argv[i], []).append(argv[i + 1]); i += 2
    name = opts["--name"][0]
    cid = "c%06d" % len(state["log"])
    state["containers"][name] = {"Id": cid, "Name": "/" + name, "Image": argv[i], "Args": argv[i + 1:],
                                 "Config": {"Labels": labels}, "State": {"Running": True}, "Options": opts}
    print(cid)
else:
    print("fake docker: unsupported: " + " ".join(argv), file=sys.stderr); rc = 125
json.dump(state, open(path, "w"))
sys.exit(rc)
'''


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/v2/health/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def ready_servers():
    """Two consecutive local ports answering /v2/health/ready (the 'instances')."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        try:
            servers = [http.server.ThreadingHTTPServer(("127.0.0.1", base + i), Ready) for i in range(2)]
        except OSError:
            continue
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        yield base
        for server in servers:
            server.shutdown()
            server.server_close()
        return
    pytest.skip("no two consecutive free ports")


@pytest.fixture
def fake_docker(tmp_path):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER.replace("/usr/bin/env python3", sys.executable))
    (bindir / "docker").chmod(0o755)
    state = tmp_path / "docker.json"
    os.environ["FAKE_DOCKER_STATE"] = str(state)
    yield str(bindir), state
    os.environ.pop("FAKE_DOCKER_STATE", None)


def write_config(base_vars, policy):
    os.makedirs(os.path.dirname(base_vars["hosttune_config"]), exist_ok=True)
    with open(base_vars["hosttune_config"], "w") as f:
        yaml.safe_dump({"policy": policy, "agent": {}}, f)


def test_ovms_containers_follow_the_plan_and_are_idempotent(tmp_path, host, base_vars, fake_docker, ready_servers):
    bindir, state_file = fake_docker
    policy = {"instances": {"base_port": ready_servers}}
    write_config(base_vars, policy)
    plan = plan_of(host, policy, tmp_path)
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    extravars = {**base_vars, "hosttune_policy": policy, "hosttune_instances_kind": "ovms",
                 "hosttune_instances_health_delay": 1}
    run = play(tmp_path, playbook, extravars, extra_path=bindir)
    assert run.rc == 0, run.explain()
    state = json.loads(state_file.read_text())
    assert sorted(state["containers"]) == ["hosttune-node0", "hosttune-node1"]
    for inst in plan["instances"]:
        c = state["containers"][f"hosttune-{inst['name']}"]
        opts = c["Options"]
        assert opts["--cpuset-cpus"] == [inst["cpus_list"]] and opts["--cpuset-mems"] == [inst["mems_list"]]
        assert opts["--publish"] == [f"127.0.0.1:{inst['port']}:{inst['port']}",
                                     f"127.0.0.1:{inst['grpc_port']}:{inst['grpc_port']}"]
        assert opts["--read-only"] == [True] and opts["--tmpfs"] == ["/tmp"] and opts["--user"] == ["5000:5000"]
        config_dir = os.path.join(base_vars["hosttune_instances_config_dir"], inst["name"])
        assert opts["--volume"] == ["/var/lib/hosttune/models:/models:ro", f"{config_dir}:/config:ro"]
        assert c["Image"] == IMAGE
        # OVMS on the plan's config.json (models, nireq, plugin_config, metrics), REST and gRPC ports
        assert c["Args"] == ["--config_path", "/config/config.json", "--rest_port", str(inst["port"]),
                             "--port", str(inst["grpc_port"])]
        with open(os.path.join(config_dir, "config.json")) as f:
            assert json.load(f) == inst["ovms"]["config"]
        with open(os.path.join(config_dir, "container.json")) as f:
            spec = json.load(f)
        assert spec["image"] == IMAGE and spec["args"] == c["Args"] and "--cpuset-cpus" in spec["options"]
    health = run.task("Wait for each instance to answer")
    assert health and all(not r["res"].get("failed") for r in health)

    again = play(tmp_path, playbook, extravars, extra_path=bindir)
    assert again.rc == 0 and again.changed() == [], again.changed()

    # a new plan: only node 1, now on the base port -> node0's container goes, node1's is recreated
    policy = {"instances": {"base_port": ready_servers, "nodes": [1]}}
    write_config(base_vars, policy)
    third = play(tmp_path, playbook, {**extravars, "hosttune_policy": policy}, extra_path=bindir)
    assert third.rc == 0, third.explain()
    state = json.loads(state_file.read_text())
    assert sorted(state["containers"]) == ["hosttune-node1"]
    assert state["containers"]["hosttune-node1"]["Options"]["--publish"][0] == f"127.0.0.1:{ready_servers}:{ready_servers}"
    assert sorted(os.listdir(base_vars["hosttune_instances_config_dir"])) == ["node1"]

    # another model in the policy: the config.json changes, --diff shows it, the container is recreated
    policy = {"instances": {"base_port": ready_servers, "nodes": [1], "model": ["sample", "second:2"]}}
    write_config(base_vars, policy)
    before = state["containers"]["hosttune-node1"]["Config"]["Labels"]["hosttune.spec"]
    check = play(tmp_path, playbook, {**extravars, "hosttune_policy": policy}, check=True, diff=True,
                 extra_path=bindir)
    assert check.rc == 0, check.explain()
    diffs = [r["res"]["diff"] for r in check.task("Write the plan's OVMS config.json of node1")]
    assert diffs and '"name": "second"' in diffs[0][0]["after"] and '"name": "second"' not in diffs[0][0]["before"]
    spec_diff = check.task("Write the container spec (what --diff shows) of node1")[0]["res"]["diff"][0]
    assert spec_diff["before"] != spec_diff["after"] and '"config_sha256"' in spec_diff["after"]
    assert json.loads(state_file.read_text())["containers"]["hosttune-node1"]["Config"]["Labels"]["hosttune.spec"] == before
    fourth = play(tmp_path, playbook, {**extravars, "hosttune_policy": policy}, extra_path=bindir)
    assert fourth.rc == 0, fourth.explain()
    assert json.loads(state_file.read_text())["containers"]["hosttune-node1"]["Config"]["Labels"]["hosttune.spec"] != before
    with open(os.path.join(base_vars["hosttune_instances_config_dir"], "node1", "config.json")) as f:
        assert [m["config"]["name"] for m in json.load(f)["model_config_list"]] == ["sample", "second"]


@pytest.mark.parametrize("image", [None, "openvino/model_server", "openvino/model_server:latest",
                                   "openvino/model_server@sha256:abc", "Openvino/x:1", "x:1 --privileged"])
def test_an_unpinned_image_is_refused_before_any_change(tmp_path, host, base_vars, fake_docker, image):
    bindir, state_file = fake_docker
    write_config(base_vars, {})
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    extravars = {**base_vars, "hosttune_instances_kind": "ovms"}
    if image is None:
        del extravars["hosttune_instances_image"]
    else:
        extravars["hosttune_instances_image"] = image
    run = play(tmp_path, playbook, extravars, extra_path=bindir)
    assert run.rc != 0
    failed = run.failed()
    assert failed[0]["task"] == "Check that the container image is given and pinned", failed
    assert "must be a pinned image reference" in failed[0]["res"]["msg"]
    assert not state_file.exists() and not os.path.exists(base_vars["hosttune_instances_config_dir"])


@pytest.mark.parametrize("image", ["openvino/model_server:2025.3", "registry.example.com:5000/ovms/server:v1.2-cpu",
                                   "openvino/model_server@sha256:" + "a" * 64, "localhost/ovms:latest-2"])
def test_pinned_images_pass_the_check(tmp_path, host, base_vars, image):
    write_config(base_vars, {})
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    run = play(tmp_path, playbook, {**base_vars, "hosttune_instances_kind": "ovms", "hosttune_instances_image": image},
               check=True)
    assert run.rc == 0, run.explain()
    assert run.task("Check that the container image is given and pinned")[0]["res"].get("failed") is not True


def test_ovms_check_mode_predicts_containers_without_running_them(tmp_path, host, base_vars, fake_docker):
    bindir, state_file = fake_docker
    write_config(base_vars, {})
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    run = play(tmp_path, playbook, {**base_vars, "hosttune_instances_kind": "ovms"}, check=True, extra_path=bindir)
    assert run.rc == 0, run.explain()
    would = run.task("Report the container that check mode would recreate")
    assert len(would) == 2 and all(r["res"]["changed"] for r in would)
    state = json.loads(state_file.read_text())
    assert state["containers"] == {}
    assert not any(argv[:1] in (["run"], ["rm"], ["pull"]) for argv in state["log"]), state["log"]


def test_systemd_instances_get_placement_drop_ins_from_the_plan(tmp_path, host, base_vars):
    write_config(base_vars, {})
    plan = plan_of(host)
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    run = play(tmp_path, playbook, base_vars)
    assert run.rc == 0, run.explain()
    units = base_vars["hosttune_instances_unit_dir"]
    template = open(os.path.join(units, "hosttune-instance@.service")).read()
    assert "\nExecStart=" not in template  # in each instance's drop-in, quoted for systemd
    for inst in plan["instances"]:
        dropin = open(os.path.join(units, f"hosttune-instance@{inst['node']}.service.d", "placement.conf")).read()
        # OVMS's command line (the container's too), then hosttune serve's own
        assert f'ExecStart="{HOSTTUNE}" "serve" "--config_path" "/config/config.json" "--rest_port" "{inst["port"]}" ' \
               f'"--port" "{inst["grpc_port"]}" "--root" "{host}" "--policy" "{base_vars["hosttune_config"]}" ' \
               f'"--plan-instance" "{inst["name"]}"\n' in dropin
        # the unit sees the config.json and the models where the container does
        config_dir = os.path.join(base_vars["hosttune_instances_config_dir"], inst["name"])
        assert f"BindReadOnlyPaths={config_dir}:/config\n" in dropin
        assert "BindReadOnlyPaths=/var/lib/hosttune/models:/models\n" in dropin
        with open(os.path.join(config_dir, "config.json")) as f:
            assert json.load(f) == inst["ovms"]["config"]
        # the inference CPUs and the node's housekeeping CPUs (serve's own threads, docs/isolation.md)
        allowed = f"{inst['cpus_list']},{inst['service_cpus_list']}"
        assert f"AllowedCPUs={allowed}\n" in dropin
        assert f"AllowedMemoryNodes={inst['mems_list']}\n" in dropin
        assert f"CPUAffinity={allowed}\n" in dropin
        assert f"HOSTTUNE_PORT={inst['port']}" in dropin
    assert play(tmp_path, playbook, base_vars).changed() == []
    # Type=notify: serve says READY=1 once its models are compiled; the sandbox is scored below
    assert "\nType=notify\nNotifyAccess=main\n" in template and "\nCapabilityBoundingSet=\n" in template


def test_one_command_line_for_the_ovms_image_and_hosttune_serve(tmp_path, host, base_vars, fake_docker):
    """The roles render one OVMS command line: the container's arguments after the image and the
    unit's after `hosttune serve` are the same list (hosttune_instances_args), hosttune serve's own
    options after it; and `hosttune serve` parses it with OVMS's meaning."""
    from hosttune.cli import build_parser
    from tests.test_hostile2 import exec_argv

    bindir, state_file = fake_docker
    write_config(base_vars, {})
    plan = plan_of(host)
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    quiet = {**base_vars, "hosttune_instances_health_check": False}
    assert play(tmp_path, playbook, {**quiet, "hosttune_instances_kind": "ovms"}, extra_path=bindir).rc == 0
    assert play(tmp_path, playbook, {**quiet, "hosttune_instances_kind": "systemd"}).rc == 0
    containers = json.loads(state_file.read_text())["containers"]
    parser = build_parser()
    for inst in plan["instances"]:
        ovms = containers[f"hosttune-{inst['name']}"]["Args"]
        dropin = open(os.path.join(base_vars["hosttune_instances_unit_dir"],
                                   f"hosttune-instance@{inst['node']}.service.d", "placement.conf")).read()
        (execstart,) = [line[len("ExecStart="):] for line in dropin.splitlines() if line.startswith("ExecStart=")]
        serve = exec_argv(execstart)
        assert serve[:2] == [HOSTTUNE, "serve"]
        extra = ["--root", host, "--policy", base_vars["hosttune_config"], "--plan-instance", inst["name"]]
        assert serve[2:] == ovms + extra, (serve, ovms)
        for argv in (ovms, serve[2:]):
            args = parser.parse_args(["serve", *argv])
            assert (args.config_path, args.rest_port, args.grpc_port) == ("/config/config.json", inst["port"],
                                                                         inst["grpc_port"])
            assert args.func.__name__ == "cmd_serve"
    # an image running hosttune serve gets the same list and its own extras after it
    extras = {**quiet, "hosttune_instances_kind": "ovms",
              "hosttune_instances_container_extra_args": ["--bind", "0.0.0.0"]}
    assert play(tmp_path, playbook, extras, extra_path=bindir).rc == 0
    for inst in plan["instances"]:
        args = json.loads(state_file.read_text())["containers"][f"hosttune-{inst['name']}"]["Args"]
        assert args == ["--config_path", "/config/config.json", "--rest_port", str(inst["port"]),
                        "--port", str(inst["grpc_port"]), "--bind", "0.0.0.0"]
        assert parser.parse_args(["serve", *args]).bind == "0.0.0.0"


@pytest.mark.parametrize("unit, limit", [("instance", 2.0), ("agent", 3.0)])
def test_units_sandbox_exposure(tmp_path, unit, limit):
    """systemd-analyze security scores both units (0 = locked down, 10 = exposed); the agent must
    keep write access to kernel tunables, the instance needs nothing but its cache and TCP."""
    if unit == "instance":
        text = open(os.path.join(REPO, "roles", "hosttune_instances", "templates", "hosttune-instance@.service.j2")).read()
        text = re.sub(r"\{\{ hosttune_instances_model_repo [^}]*\}\}", '"HOSTTUNE_MODEL_REPO=/var/lib/hosttune/models"',
                      text.replace("{{ ansible_managed }}", "managed"))
        # ExecStart= is in each instance's drop-in (placement.conf)
        text = text.replace("\n[Service]\n", f"\n[Service]\nExecStart={HOSTTUNE} serve --plan-instance node0\n", 1)
        assert "{{" not in text
        path = tmp_path / "hosttune-instance@0.service"
    else:
        text = open(os.path.join(REPO, "hosttune", "data", "hosttune-agent.service")).read()
        path = tmp_path / "hosttune-agent.service"
    path.write_text(text)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
                          capture_output=True, text=True, timeout=60)
    score = [line for line in proc.stdout.splitlines() if "Overall exposure level" in line]
    assert score, proc.stdout + proc.stderr
    exposure = float(score[0].split(":")[1].split()[0])
    assert exposure <= limit, f"{score[0]}\n{proc.stdout}"


def test_phase_tags_run_one_phase_of_a_role(tmp_path, host, base_vars):
    """--tags hosttune_instances_run writes the units (the plan, tagged always, still comes first);
    --tags hosttune_instances_nginx alone writes nothing; the agent's configure phase writes its
    configuration without its install or run phases."""
    write_config(base_vars, {})
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    units = base_vars["hosttune_instances_unit_dir"]
    nginx_only = play(tmp_path, playbook, base_vars, tags="hosttune_instances_nginx")
    assert nginx_only.rc == 0, nginx_only.explain()
    assert nginx_only.task("Publish the plan as the fact hosttune_plan")  # always
    assert not os.path.exists(os.path.join(units, "hosttune-instance@.service"))
    run_only = play(tmp_path, playbook, base_vars, tags="hosttune_instances_run")
    assert run_only.rc == 0, run_only.explain()
    assert os.path.exists(os.path.join(units, "hosttune-instance@.service"))

    os.unlink(base_vars["hosttune_config"])
    agent = write_playbook(tmp_path, "agent.yml", ["hosttune_agent"])
    configure = play(tmp_path, agent, base_vars, tags="hosttune_agent_configure")
    assert configure.rc == 0, configure.explain()
    assert os.path.exists(base_vars["hosttune_config"])
    ran = {e["event_data"].get("task") for e in configure.results()}
    assert "Write the hosttune configuration" in ran
    assert not ran & {"Link hosttune onto the PATH", "Install the hosttune-agent systemd unit"}, ran


def test_nginx_exposed_without_tls_or_access_control_fails_before_any_change(tmp_path, host, base_vars):
    write_config(base_vars, {})
    playbook = write_playbook(tmp_path, "instances.yml", ["hosttune_instances"])
    run = play(tmp_path, playbook, {**base_vars, "hosttune_instances_nginx": True,
                                    "hosttune_instances_nginx_listen": "0.0.0.0"})
    assert run.rc != 0
    failed = run.failed()
    assert failed[0]["task"] == "Check the nginx front's exposure settings"
    assert "hosttune_instances_nginx_tls_cert" in failed[0]["res"]["msg"]
    assert os.listdir(base_vars["hosttune_instances_unit_dir"]) == []


# -- bench -----------------------------------------------------------------------------------------
FAKE_BENCH = r'''#!/bin/sh
# hosttune, except `bench`: writes the reports it is asked for and a verdict from $FAKE_VERDICT
if [ "$1" != bench ]; then exec "{hosttune}" "$@"; fi
out=; html=; fail=; inst=
while [ $# -gt 0 ]; do
  case "$1" in
    --output) out=$2; shift;; --html) html=$2; shift;; --instances) inst=$2; shift;;
    --fail-unstable) fail=1;;
  esac
  shift
done
doc="{{\"schema\": \"hosttune.bench/1\", \"instance\": \"$inst\", \"verdict\": \"$FAKE_VERDICT\"}}"
echo "$doc" > "$out"; [ -n "$html" ] && echo "<html>$inst</html>" > "$html"
echo "$doc"
[ -n "$fail" ] && [ "$FAKE_VERDICT" != stable ] && exit 1
exit 0
'''


@pytest.mark.parametrize("verdict", ["stable", "unstable"])
def test_bench_fetches_reports_and_fails_when_unstable(tmp_path, host, base_vars, verdict, monkeypatch):
    stub = tmp_path / "hosttune-stub"
    stub.write_text(FAKE_BENCH.format(hosttune=HOSTTUNE))
    stub.chmod(0o755)
    # the unit lookup (agent role) is not part of this play; the bench role runs the stub
    monkeypatch.setenv("FAKE_VERDICT", verdict)
    write_config(base_vars, {})
    reports = tmp_path / "reports"
    playbook = write_playbook(tmp_path, "bench.yml", ["hosttune_bench"])
    run = play(tmp_path, playbook, {**base_vars, "hosttune_bin": str(stub), "hosttune_bench_report_dir": str(reports),
                                    "hosttune_bench_remote_dir": str(tmp_path / "remote")})
    for name in ("node0", "node1"):
        assert json.loads((reports / "localhost" / f"{name}.json").read_text())["verdict"] == verdict
        assert (reports / "localhost" / f"{name}.html").read_text().strip() == f"<html>{name}</html>"
    if verdict == "stable":
        assert run.rc == 0, run.explain()
    else:
        assert run.rc != 0
        msg = run.failed()[0]["res"]["msg"]
        assert "unstable benchmark for node0 (verdict unstable)" in msg and str(reports) in msg, msg


# -- the agent install, for real, into a temporary prefix -------------------------------------------
@pytest.fixture(scope="module")
def source_snapshot(tmp_path_factory):
    """A copy of this checkout: other work in the tree must not change the wheel between runs."""
    dest = tmp_path_factory.mktemp("src") / "hosttune"
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "artifacts", ".hypothesis",
        ".benchmarks", ".cache", "tests"))
    return str(dest)


def _venv_python() -> str:
    for candidate in ("/usr/bin/python3", sys.executable):
        ok = subprocess.run([candidate, "-c", "import ensurepip, venv, sys; assert sys.version_info >= (3, 11)"],
                            capture_output=True).returncode == 0
        if ok:
            return candidate
    pytest.skip("no Python >= 3.11 with venv/ensurepip")


@pytest.mark.timeout(900)
def test_agent_installs_hosttune_into_a_temp_prefix_idempotently(tmp_path, host, base_vars, source_snapshot):
    prefix = tmp_path / "opt"
    extravars = {
        **base_vars,
        "hosttune_agent_install_method": "wheel",
        "hosttune_agent_src": source_snapshot,
        "hosttune_agent_build_dir": str(tmp_path / "wheelhouse"),
        "hosttune_agent_wheel_dir": str(prefix / "wheels"),
        "hosttune_venv": str(prefix / "venv"),
        "hosttune_bin": str(prefix / "venv" / "bin" / "hosttune"),
        "hosttune_agent_python": _venv_python(),
        "hosttune_policy": {"profile": "throughput"},
        "hosttune_agent_options": {"interval": 10},
    }
    playbook = write_playbook(tmp_path, "agent.yml", ["hosttune_agent"], gather_facts=True)

    check = play(tmp_path, playbook, extravars, check=True)
    assert check.rc == 0, check.explain()
    assert any("check mode: hosttune is not installed" in r["res"].get("msg", "")
               for r in check.task("Say why nothing more can be predicted")), check.explain()
    assert not prefix.exists()

    run = play(tmp_path, playbook, extravars)
    assert run.rc == 0, run.explain()
    hosttune = prefix / "venv" / "bin" / "hosttune"
    out = subprocess.run([str(hosttune), "plan", "--root", host, "--policy", base_vars["hosttune_config"], "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["profile"] == "throughput"
    plan_fact = run.task("Publish the plan as the fact hosttune_plan")[-1]["res"]["ansible_facts"]["hosttune_plan"]
    assert plan_fact["profile"] == "throughput" and len(plan_fact["instances"]) == 2
    assert yaml.safe_load(open(base_vars["hosttune_config"])) == {"policy": {"profile": "throughput"},
                                                                  "agent": {"interval": 10}}
    unit = open(os.path.join(base_vars["hosttune_agent_unit_dir"], "hosttune-agent.service")).read()
    assert f'ExecStart="{hosttune}" "agent" "--root" "{host}" "--config" "{base_vars["hosttune_config"]}"\n' in unit
    assert "Type=notify" in unit and "WatchdogSec=" in unit  # the packaged unit, not a copy
    # the wheels went over as one archive (wheelhouse.tar) and were unpacked next to each other
    with tarfile.open(tmp_path / "wheelhouse" / "wheelhouse.tar") as archive:
        packed = archive.getnames()
    built = sorted(n for n in os.listdir(tmp_path / "wheelhouse") if n.endswith(".whl"))
    assert packed == built and any(n.startswith("hosttune-") for n in packed), packed
    assert sorted(os.listdir(prefix / "wheels")) == packed
    for name in packed:
        assert (prefix / "wheels" / name).read_bytes() == (tmp_path / "wheelhouse" / name).read_bytes(), name

    # a fresh venv got this wheel from the install itself: no second, forced install
    assert run.skipped("Reinstall the hosttune wheel itself"), run.explain()

    again = play(tmp_path, playbook, extravars)
    assert again.rc == 0 and again.changed() == [], again.changed()
    check = play(tmp_path, playbook, extravars, check=True, diff=True)
    assert check.rc == 0 and check.changed() == [], check.changed()

    # an older build of the same version in the venv (its marker differs, a module was changed):
    # pip alone would keep it; the forced reinstall puts this wheel's files back
    marker = prefix / "venv" / ".hosttune-wheel.sha256"
    marker.write_text("0" * 64 + "\n")
    [module] = glob.glob(str(prefix / "venv" / "lib" / "python3*" / "site-packages" / "hosttune" / "cpulist.py"))
    pristine = open(module, "rb").read()
    with open(module, "ab") as handle:
        handle.write(b"\n# an older build\n")
    upgrade = play(tmp_path, playbook, extravars)
    assert upgrade.rc == 0, upgrade.explain()
    assert [r["res"].get("changed") for r in upgrade.task("Reinstall the hosttune wheel itself")] == [True]
    assert open(module, "rb").read() == pristine
    assert marker.read_text() != "0" * 64 + "\n"

    # a policy change shows up as an honest diff in check mode, and is not written
    check = play(tmp_path, playbook, {**extravars, "hosttune_policy": {"profile": "latency"}}, check=True, diff=True)
    assert check.rc == 0
    config_task = check.task("Write the hosttune configuration")[0]["res"]
    assert config_task["changed"] and "latency" in config_task["diff"][0]["after"]
    assert yaml.safe_load(open(base_vars["hosttune_config"]))["policy"] == {"profile": "throughput"}
    plan_fact = check.task("Publish the plan as the fact hosttune_plan")[-1]["res"]["ansible_facts"]["hosttune_plan"]
    assert plan_fact["profile"] == "latency", "check mode plans with the policy the run would write"


# -- rolling -----------------------------------------------------------------------------------------
def test_an_unreachable_host_stops_the_rollout(tmp_path, host, base_vars):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(textwrap.dedent(f"""\
        all:
          children:
            hosttune:
              hosts:
                gone.invalid:
                  ansible_host: 127.0.0.1
                  ansible_port: 1
                  ansible_connection: ssh
                  ansible_ssh_common_args: -o ConnectTimeout=3 -o StrictHostKeyChecking=no
                localhost:
                  ansible_connection: local
                  ansible_python_interpreter: {sys.executable}
        """))
    run = play(tmp_path, "tune.yml", base_vars, inventory=str(inventory))
    assert run.rc != 0
    assert "gone.invalid" in run.stats.get("dark", {}), run.stats
    assert "localhost" not in {e["event_data"].get("host") for e in run.results()}, "the rollout must stop"
    assert not os.path.exists(base_vars["hosttune_config"])


def render_nginx(tmp_path, plan, allow=(), users=()) -> str:
    """The instances role's nginx front for `plan`, rendered by Ansible's template module."""
    out = tmp_path / "nginx.conf"
    book = tmp_path / "render.yml"
    book.write_text(yaml.safe_dump([{"name": "Render", "hosts": "hosttune", "gather_facts": False, "tasks": [{
        "name": "Render the nginx front", "ansible.builtin.template": {
            "src": os.path.join(REPO, "roles/hosttune_instances/templates/nginx.conf.j2"), "dest": str(out)},
        "vars": {"hosttune_plan": plan, "hosttune_instances_nginx_allow": list(allow),
                 "hosttune_instances_nginx_users": list(users),
                 "hosttune_instances_nginx_tls_cert": "", "hosttune_instances_nginx_tls_key": "",
                 "hosttune_instances_nginx_listen": "127.0.0.1", "hosttune_instances_nginx_port": 8080,
                 "hosttune_instances_nginx_server_name": "_", "hosttune_instances_nginx_max_body": "64m",
                 "hosttune_instances_nginx_htpasswd": "/etc/nginx/htpasswd"}}]}]))
    run = play(tmp_path, str(book), {})
    assert run.rc == 0, run.explain()
    return out.read_text()


@pytest.mark.parametrize("bind, upstream", [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]"),
                                            ("10.1.2.3", "10.1.2.3")])
def test_nginx_upstreams_and_health_probes_use_the_plans_probe_url(tmp_path, host, bind, upstream):
    """A wildcard bind is reached on the loopback of its own family: nginx's upstreams come from the
    plan's probe_url (the agent and bench read the same field), not from a derivation of their own."""
    plan = plan_of(host, {"instances": {"bind": bind}}, tmp_path)
    text = render_nginx(tmp_path, plan)
    servers = [line.split()[1] for line in text.splitlines() if line.strip().startswith("server ")
               and "max_fails" in line]
    assert servers == [f"{upstream}:{inst['port']}" for inst in plan["instances"]]
    assert [i["probe_url"] for i in plan["instances"]] == [f"http://{s}" for s in servers]


def test_nginx_front_never_serves_a_random_nodes_metrics(tmp_path, host):
    """/metrics at the front would go to whichever node the balancer picks: it is a 404 with its
    reason; /metrics/<instance> is proxied to exactly that instance; only / goes to the upstream."""
    import re

    plan = plan_of(host, {"instances": {"bind": "0.0.0.0"}}, tmp_path)
    assert len(plan["instances"]) == 2
    text = render_nginx(tmp_path, plan, allow=["10.0.0.0/8"], users=[{"name": "a", "password_hash": "x"}])
    # location blocks (no nested blocks in them): {match: body}
    locations = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^\s*location\s+([^{]+)\{([^}]*)\}", text, re.M)}
    assert "proxy_pass" not in locations["= /metrics"] and "return 404" in locations["= /metrics"]
    assert "node0, node1" in locations["= /metrics"]
    assert "proxy_pass" not in locations["^~ /metrics/"] and "return 404" in locations["^~ /metrics/"]
    for inst in plan["instances"]:
        body = locations[f"= /metrics/{inst['name']}"]
        assert re.findall(r"proxy_pass\s+(\S+);", body) == [f"http://127.0.0.1:{inst['port']}/metrics"]
    assert re.findall(r"proxy_pass\s+(\S+);", locations["/"]) == ["http://hosttune_instances"]
    assert set(locations) == {"= /metrics", "^~ /metrics/", "/", *(f"= /metrics/{i['name']}" for i in plan["instances"])}
    # access control sits at the server level: every location, the metrics ones included, has it
    server_level = re.split(r"^\s*location", text, maxsplit=1, flags=re.M)[0]
    assert "allow 10.0.0.0/8;" in server_level and "deny all;" in server_level and "auth_basic " in server_level


def test_web_config_reaches_the_agent_and_the_systemd_instances(tmp_path, host, base_vars):
    """hosttune_agent_web_config and hosttune_instances_web_config: each written 0640 root:<group>,
    named in the agent: section (which the agent loads as is) and in each instance's ExecStart,
    whose unit gets the group; a second run changes nothing; the ovms kind refuses one up front."""
    from hosttune.agent import config as agent_config
    from hosttune.sysfs import HostFS
    from tests.tlsutil import bcrypt_hash, self_signed

    crt, key = self_signed(str(tmp_path))
    web = {"tls_server_config": {"cert_file": crt, "key_file": key},
           "basic_auth_users": {"prom": bcrypt_hash("pw")}}
    agent_web, inst_web = str(tmp_path / "etc" / "agent-web.yml"), str(tmp_path / "etc" / "inst-web.yml")
    extravars = {**base_vars, "hosttune_agent_web_config": web, "hosttune_agent_web_config_file": agent_web,
                 "hosttune_instances_web_config": web, "hosttune_instances_web_config_file": inst_web,
                 "hosttune_instances_web_config_group": "root"}  # an existing group: no system group made here
    write_config(base_vars, {})
    playbook = write_playbook(tmp_path, "web.yml", ["hosttune_agent", "hosttune_instances"])
    run = play(tmp_path, playbook, extravars)
    assert run.rc == 0, run.explain()
    for path in (agent_web, inst_web):
        st = os.stat(path)
        assert (oct(st.st_mode & 0o777), st.st_uid, st.st_gid) == ("0o640", 0, 0), path
        assert yaml.safe_load(open(path)) == web
    assert yaml.safe_load(open(base_vars["hosttune_config"]))["agent"] == {"web_config_file": agent_web}
    cfg = agent_config.load(HostFS(host), base_vars["hosttune_config"])
    assert cfg.web.scheme == "https" and cfg.web.authorized(
        "Basic " + __import__("base64").b64encode(b"prom:pw").decode())
    units = base_vars["hosttune_instances_unit_dir"]
    for inst in plan_of(host)["instances"]:
        dropin = open(os.path.join(units, f"hosttune-instance@{inst['node']}.service.d", "placement.conf")).read()
        # after OVMS's command line and serve's own extras
        assert f'"--plan-instance" "{inst["name"]}" "--web-config-file" "{inst_web}"\n' in dropin
        assert "\nSupplementaryGroups=root\n" in dropin
    assert play(tmp_path, playbook, extravars).changed() == []

    ovms = play(tmp_path, write_playbook(tmp_path, "ovms.yml", ["hosttune_instances"]),
                {**extravars, "hosttune_instances_kind": "ovms"})
    assert ovms.rc != 0 and "OVMS containers do not read it" in ovms.stdout
