"""What ships where: the host wheel carries hosttune and the agent's unit, no Ansible content, no
testbed; `hosttune converge` takes the Ansible content from a checkout or from the installed
collection hosttune.tuning; other packages (the testbed) add commands through entry points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.collection import build_and_install
from tests.conftest import REPO
from tests.treegen import Spec, write_tree

BUILDER = os.path.join(REPO, "roles", "hosttune_agent", "files", "build_wheelhouse.py")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    """The file list of the wheel the roles install on every host, built as they build it."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, BUILDER, "--src", REPO, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with zipfile.ZipFile(out / json.loads(proc.stdout)["hosttune_wheel"]) as wheel:
        return wheel.namelist()


def test_the_host_wheel_carries_no_ansible_content_and_no_testbed(wheel_names):
    names = wheel_names
    assert "hosttune/cli.py" in names and "hosttune/agent/daemon.py" in names
    assert "hosttune/data/hosttune-agent.service" in names  # the agent's unit: the role installs it
    data = sorted(n for n in names if n.startswith("hosttune/data/"))
    assert data == ["hosttune/data/hosttune-agent.service"], data
    ansible = [n for n in names if any(part in n.split("/") for part in
                                       ("ansible", "roles", "playbooks", "inventory", "plugins", "collections"))
               or n.endswith(("ansible.cfg", ".yml", ".yaml"))]
    assert ansible == [], ansible
    assert [n for n in names if "testbed" in n] == []
    assert "hosttune/serve/process.py" not in names and [n for n in names if "serverproc" in n] == []  # test harness
    assert {n.split("/")[0] for n in names} == {"hosttune", "hosttune-0.1.0.dist-info"}
    print(f"{len(names)} files:", " ".join(sorted(names)))


# -- entry points: other packages' commands --------------------------------------------------------
def test_the_testbed_declares_its_command():
    with open(os.path.join(REPO, "testbed", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["entry-points"]["hosttune.commands"] == {"testbed": "hosttune_testbed.cli"}
    with open(os.path.join(REPO, "hosttune", "cli.py")) as f:
        assert "hosttune_testbed" not in f.read()  # the host CLI names no part of the testbed


def _dist(site, name, files):
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    for file, text in files.items():
        (info / file).write_text(text)


DEMO = """\
def register(subparsers):
    p = subparsers.add_parser("{name}", help="{name} from another package")
    p.set_defaults(func=lambda args: print("{name} ran") or 0)
"""


def test_commands_come_from_entry_points_installed_or_editable(tmp_path):
    """An installed package's entry_points.txt, and an editable install's pyproject.toml (current
    even when its metadata was written before the entry point was declared)."""
    site, src = tmp_path / "site", tmp_path / "src"
    site.mkdir()
    src.mkdir()
    (site / "demo_installed.py").write_text(DEMO.format(name="installed-demo"))
    (site / "demo_editable.py").write_text(DEMO.format(name="editable-demo"))
    _dist(site, "demo-installed", {"entry_points.txt": "[hosttune.commands]\ninstalled-demo = demo_installed\n"})
    _dist(site, "demo-editable", {"direct_url.json": json.dumps({"url": src.as_uri(),
                                                                   "dir_info": {"editable": True}})})
    (src / "pyproject.toml").write_text('[project]\nname = "demo-editable"\n'
                                        '[project.entry-points."hosttune.commands"]\neditable-demo = "demo_editable"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, str(site)])}
    run = dict(capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path))
    shown = subprocess.run([sys.executable, "-m", "hosttune", "--help"], **run)
    assert shown.returncode == 0 and "installed-demo" in shown.stdout and "editable-demo" in shown.stdout, shown
    for name in ("installed-demo", "editable-demo"):
        proc = subprocess.run([sys.executable, "-m", "hosttune", name], **run)
        assert (proc.returncode, proc.stdout) == (0, f"{name} ran\n"), proc.stderr


def test_the_checkouts_testbed_command_loads_through_its_entry_point(tmp_path):
    """testbed/ installed editable (as scripts/bootstrap does): `hosttune testbed` from its pyproject."""
    site = tmp_path / "site"
    _dist(site, "hosttune-testbed", {"direct_url.json": json.dumps({"url": f"file://{REPO}/testbed",
                                                                       "dir_info": {"editable": True}})})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "testbed"), str(site)])}
    proc = subprocess.run([sys.executable, "-m", "hosttune", "testbed", "topologies", "--json"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert {"smt4n"} <= {t["name"] for t in json.loads(proc.stdout)}


def test_our_own_commands_do_not_read_package_metadata():
    """Scanning installed packages costs tens of ms: `hosttune plan` never pays it."""
    code = ("import sys; from hosttune import cli; cli.build_parser(['-v', 'plan', '--json']); "
            "print('importlib.metadata' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.stdout.strip() == "False", proc.stderr


# -- converge without a checkout: the installed collection -------------------------------------------
PLAYBOOK = """\
- name: Through the installed collection
  hosts: all
  gather_facts: false
  tasks:
    - name: Topology of a synthetic host
      hosttune.tuning.query:
        command: topology
        root: "{{ root }}"
        bin: "{{ bin }}"
      register: topo
    - name: Show it
      ansible.builtin.debug:
        msg: "nodes={{ topo.data.summary.nodes }}"
"""


@pytest.fixture(scope="module")
def installed_hosttune(tmp_path_factory):
    """hosttune as a wheel installs it (the package alone, no checkout around it) and the collection
    hosttune.tuning as ansible-galaxy installs it."""
    work = tmp_path_factory.mktemp("installed")
    _, collections = build_and_install(work)
    site = work / "site"
    shutil.copytree(os.path.join(REPO, "hosttune"), site / "hosttune",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return work, site, collections


def _converge(work, site, *args, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "HOSTTUNE_"))}
    environ.update(PYTHONPATH=str(site), HOME=str(work / "home"), **env)
    return subprocess.run([sys.executable, "-m", "hosttune", "converge", *args, "--artifacts",
                           str(work / "artifacts")], capture_output=True, text=True, timeout=300,
                          env=environ, cwd=str(work))


def test_converge_runs_from_the_installed_collection(installed_hosttune, tmp_path):
    work, site, collections = installed_hosttune
    from hosttune import converge

    installed = collections / "ansible_collections" / "hosttune" / "tuning"
    assert converge.collections_path(str(installed)) == str(collections)
    root = write_tree(str(tmp_path / "host"), Spec())
    (tmp_path / "check.yml").write_text(PLAYBOOK)
    hosttune_bin = os.path.join(os.path.dirname(sys.executable), "hosttune")
    proc = _converge(work, site, "-i", "localhost", str(tmp_path / "check.yml"), "-e", f"root={root}",
                     "-e", f"bin={hosttune_bin}", ANSIBLE_COLLECTIONS_PATH=str(collections))
    assert proc.returncode == 0, proc.stderr
    assert f"on {installed}/inventory/localhost" in proc.stderr  # the inventory the collection carries
    events = os.path.join(proc.stderr.strip().rsplit("artifacts: ", 1)[1], "job_events")
    shown = []
    for name in os.listdir(events):
        with open(os.path.join(events, name)) as f:
            event = json.load(f)
        if event["event"] == "runner_on_ok" and event["event_data"]["task"] == "Show it":
            shown.append(event["event_data"]["res"]["msg"])
    assert shown == ["nodes=2"], shown  # treegen's default Spec: two NUMA nodes


def test_converge_without_ansible_content_is_one_line(installed_hosttune):
    work, site, _ = installed_hosttune
    proc = _converge(work, site, "-i", "localhost", "site", ANSIBLE_COLLECTIONS_PATH=str(work / "empty"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("hosttune: error: --ansible-dir: hosttune's playbooks and roles are not here: "
                                  "install the collection hosttune.tuning"), proc.stderr


def test_converge_names_a_wrong_ansible_dir(installed_hosttune, tmp_path):
    work, site, _ = installed_hosttune
    proc = _converge(work, site, "-i", "localhost", "--ansible-dir", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith(f"hosttune: error: {tmp_path}: no playbooks/site.yml")
    proc = _converge(work, site, "-i", "localhost", HOSTTUNE_ANSIBLE_DIR=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"hosttune: error: HOSTTUNE_ANSIBLE_DIR={tmp_path}: no playbooks/site.yml")


def test_a_command_module_that_cannot_be_imported_is_one_warning(tmp_path):
    site = tmp_path / "site"
    _dist(site, "demo-broken", {"entry_points.txt": "[hosttune.commands]\nbroken = demo_missing_module\n"})
    proc = subprocess.run([sys.executable, "-m", "hosttune", "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([REPO, str(site)])}, cwd=str(tmp_path))
    assert proc.returncode == 0 and "plan" in proc.stdout, proc.stderr
    assert proc.stderr == ("hosttune: warning: command broken: cannot import demo_missing_module: "
                           "No module named 'demo_missing_module'\n")
