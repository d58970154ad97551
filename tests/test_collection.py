"""The Ansible content as the collection hosttune.tuning, the way infra teams take it: the tarball
`ansible-galaxy collection build` makes from the repository root, installed into an empty
collections path, then used only through fully qualified names - ansible-doc for every module and
role, and `ansible-playbook hosttune.tuning.<playbook>` in check mode on a synthetic host tree.

Nothing here reads the checkout's roles: ANSIBLE_CONFIG points at an empty file, the working
directory is a temp directory, and the only collections path is the one the tarball went into.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest
import yaml

from tests.collection import BIN, build, build_and_install, version
from tests.conftest import REPO
from tests.test_ansible import THREE_MISTAKES, THREE_MISTAKES_SAID, _venv_python
from tests.test_ansible import base_vars, host, tree_digest  # noqa: F401 (base_vars, host: fixtures)

ROLES = sorted(d for d in os.listdir(os.path.join(REPO, "roles")) if not d.startswith("."))
MODULES = ["hosttune.tuning.apply", "hosttune.tuning.query"]
MONITORING_FILES = ["alerts.yml", "tests/alerts_test.yml", "grafana-dashboard.json", "prometheus.yml"]
# bytes: roles, modules, playbooks, docs (~250 kB) and the agent's wheels (hosttune ~280 kB, PyYAML
# ~830 kB); no Python package source, tests or testbed
MAX_TARBALL = 1_500_000
WHEELHOUSE = "roles/hosttune_agent/files/wheelhouse"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(tarball, collections path, environment, work dir) of the built and installed collection."""
    work = tmp_path_factory.mktemp("collection")
    cfg = work / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    env = {
        "PATH": os.pathsep.join([BIN, os.environ.get("PATH", "")]),
        "HOME": str(work),  # no ~/.ansible from elsewhere
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_COLLECTIONS_PATH": str(work / "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(work / "tmp"),
        "LC_ALL": "C.UTF-8",
    }
    tarball, collections = build_and_install(work, env)
    return tarball, collections, env, work


def test_the_tarball_holds_the_collection_and_nothing_else(installed):
    tarball, collections, _, _ = installed
    size = tarball.stat().st_size
    assert size < MAX_TARBALL, f"{tarball.name}: {size} bytes"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    manifest = json.loads(tarfile.open(tarball).extractfile("MANIFEST.json").read())
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == ("hosttune", "tuning", version())
    assert info["license"] == ["Apache-2.0"]
    for needed in ("meta/runtime.yml", "plugins/modules/apply.py", "plugins/modules/query.py",
                   "plugins/module_utils/hosttune_run.py", "playbooks/site.yml", "LICENSE", "docs/collection.md",
                   "tests/config.yml", *(f"monitoring/{m}" for m in MONITORING_FILES)):
        assert needed in names, needed
    for role in ROLES:
        assert f"roles/{role}/meta/argument_specs.yml" in names and f"roles/{role}/README.md" in names, role
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"hosttune", "testbed", "molecule", "collections", "benchmarks", "scripts", ".venv", ".git"}, tops
    assert manifest["collection_info"]["readme"] == "docs/collection.md"
    # of tests/ only what ansible-test reads: config.yml and the sanity ignore files
    assert not [n for n in names if n.startswith("tests/") and n not in ("tests/config.yml", "tests/sanity")
                and not n.startswith("tests/sanity/ignore-")]
    installed_root = collections / "ansible_collections" / "hosttune" / "tuning"
    assert (installed_root / "MANIFEST.json").is_file()
    print(f"{tarball.name}: {size} bytes, {len(names)} entries")


def _wheelhouse(root):
    """(wheelhouse.json, {wheel name: bytes}) of an extracted or installed collection."""
    manifest = json.loads((root / WHEELHOUSE / "wheelhouse.json").read_text())
    with tarfile.open(root / WHEELHOUSE / manifest["archive"]) as tar:
        wheels = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    return manifest, wheels


def test_the_tarball_carries_the_agents_wheels_built_reproducibly(installed, tmp_path):
    """scripts/build_collection put hosttune's wheel and PyYAML's (the one dependency of the base
    install, as the manylinux CPython 3.11 wheel of the claimed platform) into the agent role, as one
    wheelhouse.tar; the hosttune wheel holds this checkout's package byte for byte (the policy check
    on the controller runs that code); a second build gives the same bytes."""
    tarball, collections, env, _ = installed
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert f"{WHEELHOUSE}/wheelhouse.json" in names and f"{WHEELHOUSE}/wheelhouse.tar" in names
    assert not [n for n in names if n.endswith(".whl")], "the wheels travel inside wheelhouse.tar"
    root = collections / "ansible_collections" / "hosttune" / "tuning"
    manifest, wheels = _wheelhouse(root)
    assert manifest["deps"] is True and manifest["extras"] == [] and manifest["platform"] == "cp311-manylinux_2_36_x86_64"
    assert sorted(wheels) == manifest["wheels"]
    [hosttune] = [n for n in wheels if n.startswith("hosttune-")]
    assert hosttune == manifest["hosttune_wheel"] == f"hosttune-{version()}-py3-none-any.whl"
    [pyyaml] = [n for n in wheels if n.lower().startswith("pyyaml-")]
    assert "-cp311-cp311-" in pyyaml and "manylinux" in pyyaml and pyyaml.endswith("_x86_64.whl"), pyyaml
    assert set(wheels) == {hosttune, pyyaml}, "the base install needs PyYAML only (pyproject's dependencies)"
    (tmp_path / hosttune).write_bytes(wheels[hosttune])
    with zipfile.ZipFile(tmp_path / hosttune) as wheel:
        packaged = {n: wheel.read(n) for n in wheel.namelist() if n.startswith("hosttune/")}
    source = {os.path.relpath(os.path.join(d, f), REPO) for d, _, fs in os.walk(os.path.join(REPO, "hosttune"))
              for f in fs if f.endswith(".py")}
    assert source <= set(packaged), sorted(source - set(packaged))
    for name, data in packaged.items():
        with open(os.path.join(REPO, name), "rb") as f:
            assert f.read() == data, name
    again = build(tmp_path / "dist2", env)
    root2 = _extracted(again, tmp_path / "again")
    assert _wheelhouse(root2) == (manifest, wheels)
    assert (root2 / WHEELHOUSE / "wheelhouse.tar").read_bytes() == (root / WHEELHOUSE / "wheelhouse.tar").read_bytes()


def _agent_play(tmp_path, env, work, extravars, collections=None):
    (tmp_path / "vars.json").write_text(json.dumps(extravars))
    (tmp_path / "play.yml").write_text("- hosts: all\n  gather_facts: false\n  roles: [hosttune.tuning.hosttune_agent]\n")
    if collections is not None:
        env = {**env, "ANSIBLE_COLLECTIONS_PATH": str(collections)}
    return subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", os.path.join(REPO, "inventory", "localhost"),
                           str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'vars.json'}"], capture_output=True,
                          text=True, timeout=900, env=env, cwd=str(work))


@pytest.mark.timeout(900)
def test_the_agent_installs_from_the_collections_wheels_with_no_checkout_and_no_index(installed, tmp_path,
                                                                                     base_vars):
    """hosttune.tuning.hosttune_agent from the installed tarball, its default install method and no
    hosttune_agent_src: the venv gets the collection's wheels with pip --no-index (pip's own
    configuration off, its index unreachable), nothing is built on the controller. A collection
    without its wheelhouse stops before any change, naming the command that builds it."""
    _, collections, env, work = installed
    prefix = tmp_path / "opt"
    extravars = {**base_vars, "hosttune_venv": str(prefix / "venv"), "hosttune_bin": str(prefix / "venv" / "bin" / "hosttune"),
                 "hosttune_agent_wheel_dir": str(prefix / "wheels"), "hosttune_agent_python": _venv_python(),
                 "hosttune_agent_build_dir": str(tmp_path / "built"), "hosttune_policy": {"profile": "throughput"},
                 "hosttune_agent_extras": []}  # inventory/localhost's [serve]: not in this build (checked below)
    for name in ("hosttune_agent_install_method", "hosttune_agent_src"):
        extravars.pop(name, None)
    offline = {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
               "PIP_NO_CACHE_DIR": "1"}
    proc = _agent_play(tmp_path, offline, work, extravars)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "TASK [hosttune.tuning.hosttune_agent : Build the hosttune wheel on the controller]" not in proc.stdout \
        or "skipping" in proc.stdout.split("Build the hosttune wheel on the controller]")[1].split("TASK")[0]
    assert not (tmp_path / "built").exists()
    assert os.path.join(REPO, "roles") not in proc.stdout
    manifest, wheels = _wheelhouse(collections / "ansible_collections" / "hosttune" / "tuning")
    assert sorted(os.listdir(prefix / "wheels")) == manifest["wheels"]
    plan = subprocess.run([str(prefix / "venv" / "bin" / "hosttune"), "plan", "--root", base_vars["hosttune_root"],
                           "--policy", base_vars["hosttune_config"], "--json"], capture_output=True, text=True)
    assert plan.returncode == 0 and json.loads(plan.stdout)["profile"] == "throughput", plan.stderr
    freeze = subprocess.run([str(prefix / "venv" / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, env=offline)
    installed_dists = {d["name"].lower(): d["version"] for d in json.loads(freeze.stdout)}
    assert installed_dists["hosttune"] == version() and "pyyaml" in installed_dists, installed_dists
    assert f"pyyaml-{installed_dists['pyyaml']}-" in " ".join(wheels).lower()

    # the same collection built with ansible-galaxy alone: no wheelhouse
    bare = tmp_path / "bare"
    shutil.copytree(collections, bare, symlinks=True)
    shutil.rmtree(bare / "ansible_collections" / "hosttune" / "tuning" / WHEELHOUSE)
    fresh = {**extravars, "hosttune_venv": str(tmp_path / "venv2"), "hosttune_bin": str(tmp_path / "venv2" / "bin" / "hosttune")}
    proc = _agent_play(tmp_path, offline, work, fresh, collections=bare)
    assert proc.returncode == 2, proc.stdout[-4000:]
    refused = [line for line in proc.stdout.splitlines() if line.startswith("fatal:")]
    assert len(refused) == 1 and "Check that the collection carries the agent's wheels" in proc.stdout, proc.stdout[-4000:]
    assert "build it from a hosttune checkout with scripts/build_collection" in refused[0], refused
    assert "changed=0" in proc.stdout and not (tmp_path / "venv2").exists()

    # an extra whose wheels the build left out: named, with the build command that bundles them
    proc = _agent_play(tmp_path, offline, work, {**fresh, "hosttune_agent_extras": ["serve"]})
    assert proc.returncode == 2, proc.stdout[-4000:]
    refused = [line for line in proc.stdout.splitlines() if line.startswith("fatal:")]
    assert len(refused) == 1 and "build the collection with scripts/build_collection --extras serve" in refused[0], refused
    assert "changed=0" in proc.stdout and not (tmp_path / "venv2").exists()


def test_every_policy_mistake_fails_on_the_controller_with_the_collections_hosttune(installed, tmp_path, base_vars):
    """hosttune.tuning.tune from the installed tarball: the up-front validation runs hosttune's
    validator from the collection's wheel and names all three mistakes; nothing changes."""
    _, collections, env, work = installed
    before = tree_digest(base_vars["hosttune_root"])
    (tmp_path / "vars.json").write_text(json.dumps({**base_vars, "hosttune_policy": THREE_MISTAKES}))
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-v", "-i", os.path.join(REPO, "inventory", "localhost"),
                           "hosttune.tuning.tune", "-e", f"@{tmp_path / 'vars.json'}"], capture_output=True, text=True,
                          timeout=600, env=env, cwd=str(work))
    assert proc.returncode == 2, proc.stdout[-4000:]
    wheelhouse = str(collections / "ansible_collections" / "hosttune" / "tuning" / WHEELHOUSE)
    check = proc.stdout.split("Check hosttune_policy with hosttune, on the controller]")[1].split("TASK [")[0]
    assert "--wheelhouse" in check and wheelhouse.replace("/roles/hosttune_agent/", "/roles/hosttune/../hosttune_agent/") in check, check
    failure = proc.stdout.split("TASK [hosttune.tuning.hosttune : Refuse a policy with mistakes]")[1]
    assert failure.count("fatal:") == 1 and all(said in failure for said in THREE_MISTAKES_SAID), failure[:3000]
    assert "changed=0" in proc.stdout and "failed=1" in proc.stdout
    assert tree_digest(base_vars["hosttune_root"]) == before and not os.path.exists(base_vars["hosttune_config"])


def test_the_playbooks_validation_checks_the_collections_wheels(installed, tmp_path, base_vars):
    """The playbooks' first task (hosttune.tuning.hosttune's validate) runs the agent role's check of
    its wheels from the installed collection: an extra they lack is refused there, before any role."""
    _, collections, env, work = installed
    (tmp_path / "play.yml").write_text(yaml.safe_dump([{
        "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Validate", "ansible.builtin.include_role": {"name": "hosttune.tuning.hosttune",
                                                                       "tasks_from": "validate"},
                   "vars": {"hosttune_validate_roles": ["hosttune", "hosttune_agent"]}}]}]))
    extravars = {k: v for k, v in base_vars.items() if k != "hosttune_agent_install_method"}
    out = {}
    for extras in ([], ["serve"]):
        (tmp_path / "vars.json").write_text(json.dumps({**extravars, "hosttune_agent_extras": extras}))
        out[bool(extras)] = subprocess.run(
            [os.path.join(BIN, "ansible-playbook"), "-v", "-i", os.path.join(REPO, "inventory", "localhost"),
             str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'vars.json'}"], capture_output=True, text=True,
            timeout=300, env=env, cwd=str(work))
    assert out[False].returncode == 0, out[False].stdout[-4000:]
    assert "TASK [hosttune.tuning.hosttune_agent : Check that the collection carries the agent's wheels]" in out[False].stdout
    assert "--wheelhouse" in out[False].stdout.split("Check hosttune_policy with hosttune, on the controller]")[1]
    assert out[True].returncode == 2, out[True].stdout[-4000:]
    refused = [line for line in out[True].stdout.splitlines() if line.startswith("fatal:")]
    assert len(refused) == 1 and "scripts/build_collection --extras serve" in refused[0], refused


def test_the_policy_check_needs_no_hosttune_on_the_controller(installed, tmp_path):
    """check_policy.py from the installed collection, run by a Python that has PyYAML (what Ansible
    needs) and no hosttune: it imports hosttune from the collection's wheel."""
    import yaml as yaml_module

    _, collections, _, _ = installed
    root = collections / "ansible_collections" / "hosttune" / "tuning"
    python = tmp_path / "controller" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "controller")], check=True, timeout=120)
    shutil.copytree(os.path.dirname(yaml_module.__file__), tmp_path / "yaml-only" / "yaml")
    [site] = (tmp_path / "controller" / "lib").glob("python3*/site-packages")
    (site / "yaml-only.pth").write_text(str(tmp_path / "yaml-only") + "\n")
    probe = subprocess.run([str(python), "-I", "-c", "import yaml\ntry:\n import hosttune\nexcept ImportError:\n print('no hosttune')"],
                           capture_output=True, text=True, cwd=str(tmp_path))
    assert probe.stdout.strip() == "no hosttune", probe.stdout + probe.stderr
    argv = [str(python), "-I", str(root / "roles" / "hosttune" / "files" / "check_policy.py"), "--wheelhouse", str(root / WHEELHOUSE)]
    bad = subprocess.run(argv, input=json.dumps(THREE_MISTAKES), capture_output=True, text=True, cwd=str(tmp_path))
    lines = bad.stdout.splitlines()
    assert bad.returncode == 2 and len(lines) == 3, bad.stdout + bad.stderr
    assert all(line.startswith(said) for line, said in zip(lines, THREE_MISTAKES_SAID)), lines
    good = subprocess.run(argv, input=json.dumps({"profile": "throughput"}), capture_output=True, text=True, cwd=str(tmp_path))
    assert good.returncode == 0 and good.stdout == "" and good.stderr == "", good.stdout + good.stderr


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_each_module(installed, module):
    _, _, env, work = installed
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "--json", module], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(work))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[module]
    assert doc["doc"]["short_description"] and doc["doc"]["options"]
    assert doc["examples"] and module in doc["examples"]  # the examples call it by its FQCN
    # Ansible's module-doc conventions: when it came, and what it supports (check mode, diff, platform)
    assert doc["doc"]["version_added"] == "0.1.0"
    attributes = doc["doc"]["attributes"]
    assert set(attributes) == {"check_mode", "diff_mode", "platform"}, attributes
    assert all(a["description"] and a["support"] in ("full", "partial", "none", "N/A") for a in attributes.values())
    assert attributes["platform"]["platforms"] == "posix"
    assert doc["return"]
    text = subprocess.run([os.path.join(BIN, "ansible-doc"), module], capture_output=True, text=True, timeout=120,
                          env=env, cwd=str(work))
    assert text.returncode == 0 and "EXAMPLES" in text.stdout and "RETURN VALUES" in text.stdout, text.stderr


def test_ansible_doc_renders_each_role_entry_point(installed):
    _, _, env, work = installed
    listed = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "role", "-l", "hosttune.tuning", "--json"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=str(work))
    assert listed.returncode == 0, listed.stderr
    assert sorted(json.loads(listed.stdout)) == [f"hosttune.tuning.{r}" for r in ROLES]
    for role in ROLES:
        proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "role", "--json", f"hosttune.tuning.{role}"],
                              capture_output=True, text=True, timeout=120, env=env, cwd=str(work))
        assert proc.returncode == 0, proc.stderr
        entry = json.loads(proc.stdout)[f"hosttune.tuning.{role}"]["entry_points"]["main"]
        assert entry["short_description"], role


def test_playbooks_by_fqcn_run_from_the_installed_collection_only(installed, tmp_path, host, base_vars):
    """`ansible-playbook hosttune.tuning.tune --check --diff` and `hosttune.tuning.deploy --check`
    against a synthetic host tree: the roles and modules come from the installed tarball (the
    checkout is not on any path), the plan is computed and nothing changes."""
    _, collections, env, work = installed
    before = tree_digest(host)
    extravars = base_vars  # test_ansible's: every path inside tmp_path, nothing installed or started
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps(extravars))
    inventory = os.path.join(REPO, "inventory", "localhost")
    out = {}
    for playbook, flags in (("hosttune.tuning.tune", ["--check", "--diff"]), ("hosttune.tuning.deploy", ["--check"])):
        proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", inventory, playbook, *flags,
                               "-e", f"@{varfile}"], capture_output=True, text=True, timeout=900, env=env,
                              cwd=str(work))
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert "failed=0" in proc.stdout
        out[playbook] = proc.stdout
    tune = out["hosttune.tuning.tune"]
    # the tasks ran from the installed roles, and check mode predicted the changes (with a diff)
    installed_roles = str(collections / "ansible_collections" / "hosttune" / "tuning" / "roles")
    assert "TASK [hosttune.tuning.hosttune_kernel : Stage the kernel arguments with the boot loader]" in tune, tune[-4000:]
    assert "TASK [hosttune.tuning.hosttune_cpu : Apply the CPU power settings]" in tune
    assert "governor" in tune  # the --diff of the CPU settings
    assert os.path.join(REPO, "roles") not in tune + out["hosttune.tuning.deploy"]
    assert "TASK [hosttune.tuning.hosttune_instances : Check that the container image is given and pinned]" in \
        out["hosttune.tuning.deploy"]
    assert os.path.isdir(installed_roles)
    assert tree_digest(host) == before
    assert not os.path.exists(extravars["hosttune_config"])


def test_role_readmes_match_their_argument_specs():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "role-docs"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_ansible_test_sanity_passes_on_the_installed_collection(installed):
    """ansible-test sanity (all 24 tests it runs without containers: validate-modules, pylint,
    pep8, compile, import, yamllint, ansible-doc, ...) on the installed copy, with the
    ansible-core the project runs. ansible-test installs the sanity tools it pins (pylint,
    yamllint, voluptuous, ...) into a venv of its own under .cache/, kept between runs; its pip
    bootstrap script, normally downloaded from ci-files.testing.ansible.com, is
    scripts/ansible-test-get-pip.py (ensurepip, then pip from the package index)."""
    import importlib.metadata

    _, collections, env, work = installed
    core = importlib.metadata.version("ansible-core")
    venv = os.path.join(REPO, ".cache", f"ansible-test-{core}")
    if not os.path.exists(os.path.join(venv, "bin", "ansible-test")):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
        pip = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", f"ansible-core=={core}"],
                             capture_output=True, text=True, timeout=900)
        assert pip.returncode == 0, pip.stderr
    cache = work / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    stand_in = open(os.path.join(REPO, "scripts", "ansible-test-get-pip.py")).read()
    for pip_version in ("24.2", "24.3", "25.0", "25.1", "25.2", "25.3"):
        (cache / f"get_pip_{pip_version.replace('.', '_')}.py").write_text(stand_in)
    root = collections / "ansible_collections" / "hosttune" / "tuning"
    proc = subprocess.run([os.path.join(venv, "bin", "ansible-test"), "sanity", "--requirements",
                           "--python", f"{sys.version_info.major}.{sys.version_info.minor}", "--color", "no"],
                          capture_output=True, text=True, timeout=1800, cwd=str(root),
                          env={**env, "PATH": os.pathsep.join([os.path.join(venv, "bin"), env["PATH"]])})
    ran = [line for line in proc.stdout.splitlines() if line.startswith("Running sanity test")]
    print("\n".join(ran))
    assert proc.returncode == 0, (proc.stdout[-6000:] + proc.stderr[-6000:])
    assert len(ran) >= 20 and any('"validate-modules"' in r for r in ran) and any('"pylint"' in r for r in ran), ran


def _yaml(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return yaml.safe_load(f)


def test_the_claimed_platforms_are_the_checked_ones():
    """Every role claims exactly the platforms of the agent role's checked list, that list is what
    the Molecule guests run (testbed's Debian suite), each one's python3 meets hosttune's
    requires-python, which is the minimum the role checks on the host."""
    agent_vars = _yaml("roles", "hosttune_agent", "vars", "main.yml")
    checked = agent_vars["__hosttune_agent_platforms"]
    claims = [{"name": p["name"], "versions": p["versions"]} for p in checked]
    for role in ROLES:
        assert _yaml("roles", role, "meta", "main.yml")["galaxy_info"]["platforms"] == claims, role
    from testbed.hosttune_testbed.image import SUITE  # the Molecule guests' distribution

    assert claims == [{"name": "Debian", "versions": [SUITE]}]
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        requires = tomllib.load(f)["project"]["requires-python"]
    assert requires == ">=" + agent_vars["__hosttune_agent_python_min"]
    minimum = tuple(int(x) for x in agent_vars["__hosttune_agent_python_min"].split("."))
    assert all(tuple(int(x) for x in p["python3"].split(".")) >= minimum for p in checked)
    docs = open(os.path.join(REPO, "docs", "ansible.md")).read()
    assert "Platforms: **Debian 12 (bookworm)**" in docs


@pytest.mark.parametrize("found, says", [("3.9.18", "is Python 3.9.18"), (None, "is not runnable")])
def test_a_python_older_than_hosttune_needs_is_refused_before_any_change(installed, tmp_path, base_vars, found,
                                                                         says):
    """EL 9's python3 is 3.9, Ubuntu 22.04's 3.10: the agent role stops at its first task with one
    message naming what it found and what is needed; no venv, no wheel build, nothing changed."""
    _, _, env, work = installed
    python = tmp_path / "python3"
    if found:
        python.write_text(f"#!/bin/sh\necho {found}\n")
        python.chmod(0o755)
    extravars = {**base_vars, "hosttune_agent_install_method": "wheel", "hosttune_agent_python": str(python),
                 "hosttune_venv": str(tmp_path / "venv"), "hosttune_agent_build_dir": str(tmp_path / "wheels")}
    extravars.pop("hosttune_bin")
    (tmp_path / "vars.json").write_text(json.dumps(extravars))
    (tmp_path / "play.yml").write_text("- hosts: all\n  gather_facts: false\n  roles: [hosttune.tuning.hosttune_agent]\n")
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", os.path.join(REPO, "inventory", "localhost"),
                           str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'vars.json'}"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(work))
    assert proc.returncode == 2, proc.stdout[-4000:]
    refused = [line for line in proc.stdout.splitlines() if line.startswith("fatal:")]
    assert len(refused) == 1 and "Refuse a Python hosttune does not run on" in proc.stdout, proc.stdout[-4000:]
    assert f"hosttune_agent_python {python} {says}" in refused[0], refused
    assert "hosttune needs Python >= 3.11. The supported platform is Debian bookworm;" in refused[0], refused
    assert "changed=0" in proc.stdout and "failed=1" in proc.stdout
    assert not (tmp_path / "venv").exists() and not (tmp_path / "wheels").exists()
    assert not os.path.exists(extravars["hosttune_config"])


def _extracted(tarball, into):
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data")
    return into


# a path-like word (a/b, a/b.md, ../x): it names a file when the checkout has it
PATH_WORD = re.compile(r"(?<![\w/.:-])((?:\.\./|\./)?[\w.-]+(?:/[\w.-]*)+)")
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_docs_in_the_tarball_refer_only_to_files_in_it(installed, tmp_path):
    """Every relative link of every .md in the tarball resolves inside it, and every path the text
    names (a word like docs/x.md or hosttune/policy.py that is a file or directory of the checkout)
    is in the tarball too: what is not shipped is linked by its repository URL."""
    tarball = installed[0]
    root = _extracted(tarball, tmp_path / "x")
    docs = sorted(p for p in root.rglob("*.md"))
    assert len(docs) >= len(ROLES) + 3, docs  # the roles' READMEs, docs/collection.md, ansible.md, monitoring.md
    missing = []
    for doc in docs:
        rel = doc.relative_to(root)
        text = re.sub(r"<!--.*?-->", "", doc.read_text(), flags=re.S)  # not rendered
        for target in MD_LINK.findall(text):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (doc.parent / path).exists():
                missing.append(f"{rel}: link {target}")
        for word in PATH_WORD.findall(MD_LINK.sub("", text)):
            word = word.rstrip(".")
            for base in (str(rel.parent), ""):
                if os.path.exists(os.path.join(REPO, base, word)):
                    if not (root / base / word).exists():
                        missing.append(f"{rel}: {word}")
                    break
    assert not missing, missing


def _promtool(*args, cwd):
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/bootstrap installs Debian's prometheus package"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=str(cwd))


def test_promtool_passes_on_the_installed_monitoring_files(installed):
    _, collections, _, _ = installed
    monitoring = collections / "ansible_collections" / "hosttune" / "tuning" / "monitoring"
    for name in MONITORING_FILES:
        assert (monitoring / name).is_file(), name
    checks = [(("check", "rules", "alerts.yml"), monitoring), (("check", "config", "prometheus.yml"), monitoring),
              (("test", "rules", "alerts_test.yml"), monitoring / "tests")]
    for args, cwd in checks:
        proc = _promtool(*args, cwd=cwd)
        assert proc.returncode == 0, (args, proc.stdout + proc.stderr)
    rules = yaml.safe_load((monitoring / "alerts.yml").read_text())
    count = sum(len(g["rules"]) for g in rules["groups"])
    assert f"SUCCESS: {count} rules found" in _promtool("check", "rules", "alerts.yml", cwd=monitoring).stdout
    json.loads((monitoring / "grafana-dashboard.json").read_text())


def _slug(heading):
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_in_the_shipped_docs(installed, tmp_path):
    """runbook_url is the repository's page (galaxy.yml's repository, main branch) at the alert's own
    heading; that page and heading are in the tarball."""
    tarball, collections, _, _ = installed
    root = _extracted(tarball, tmp_path / "x")
    repository = _yaml("galaxy.yml")["repository"]
    rules = yaml.safe_load((root / "monitoring" / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 13, len(alerts)  # docs/monitoring.md's table: 13 as of 0.1.0
    for rule in alerts:
        url = rule["annotations"].get("runbook_url", "")
        prefix = repository + "/blob/main/"
        assert url.startswith(prefix) and "#" in url, (rule["alert"], url)
        path, anchor = url[len(prefix):].split("#")
        doc = root / path
        assert doc.is_file(), (rule["alert"], path)
        headings = {_slug(m) for m in re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.M)}
        assert anchor == rule["alert"].lower() and anchor in headings, (rule["alert"], anchor)


def test_the_monitoring_role_writes_the_files_with_check_mode_and_diff(installed, tmp_path):
    """hosttune.tuning.hosttune_monitoring from the installed collection: --check --diff changes nothing
    and shows the files; a run writes them (the rules checked by promtool first) byte for byte; a
    second run changes nothing; a directory left empty leaves its file out."""
    _, collections, env, work = installed
    source = collections / "ansible_collections" / "hosttune" / "tuning" / "monitoring"
    rules, dashboards = tmp_path / "rules", tmp_path / "grafana" / "dashboards"
    extravars = {"hosttune_monitoring_rules_dir": str(rules), "hosttune_monitoring_dashboard_dir": str(dashboards),
                 "hosttune_monitoring_promtool": shutil.which("promtool"),
                 "hosttune_monitoring_owner": str(os.getuid()), "hosttune_monitoring_group": str(os.getgid())}
    (tmp_path / "vars.json").write_text(json.dumps(extravars))
    (tmp_path / "play.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  roles: [hosttune.tuning.hosttune_monitoring]\n")

    def play(*flags):
        proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", os.path.join(REPO, "inventory", "localhost"),
                               str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'vars.json'}", *flags],
                              capture_output=True, text=True, timeout=300, env=env, cwd=str(work))
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return proc.stdout

    checked = play("--check", "--diff")
    assert not rules.exists() and not dashboards.exists()
    assert "changed=2" in checked and "hosttune-alerts.yml" in checked and "HosttuneAgentDown" in checked
    written = play()
    assert "changed=2" in written, written[-3000:]
    assert (rules / "hosttune-alerts.yml").read_bytes() == (source / "alerts.yml").read_bytes()
    assert (dashboards / "hosttune-dashboard.json").read_bytes() == (source / "grafana-dashboard.json").read_bytes()
    assert sorted(os.listdir(rules)) == ["hosttune-alerts.yml"]  # no scrape example: its directory was ""
    assert "changed=0" in play("--diff")


def test_the_changelog_fragments_pass_antsibull_changelog_lint():
    """The real `antsibull-changelog lint` (pyproject's test extra) on the checkout: config.yaml,
    changelog.yaml and every fragment in a section the config declares."""
    tool = os.path.join(BIN, "antsibull-changelog")
    assert os.access(tool, os.X_OK), f"{tool} is missing: scripts/bootstrap installs the test extra"
    proc = subprocess.run([tool, "lint"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    config = _yaml("changelogs", "config.yaml")
    sections = {name for name, _ in config["sections"]} | {config["prelude_section_name"],
                                                          config["trivial_section_name"]}
    fragments = sorted(os.listdir(os.path.join(REPO, "changelogs", "fragments")))
    assert fragments and all(f.endswith(".yml") for f in fragments), fragments
    for name in fragments:
        assert set(_yaml("changelogs", "fragments", name)) <= sections, name


def test_ansible_lint_production_profile_is_clean_on_the_installed_collection(installed):
    """ansible-lint --profile production in the installed collection's root: the roles, playbooks,
    monitoring files, changelog and meta as a user gets them (about 25 CPU-seconds)."""
    _, collections, env, work = installed
    root = collections / "ansible_collections" / "hosttune" / "tuning"
    proc = subprocess.run([os.path.join(BIN, "ansible-lint"), "--profile", "production", "--nocolor"],
                          capture_output=True, text=True, timeout=1200, cwd=str(root), start_new_session=True,
                          env={**env, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


@pytest.mark.parametrize("policy, says", [
    ({"cpufreq": {"governer": "performance"}}, "hosttune_policy.cpufreq.governer: unknown key (known: "),
    ({"profile": "fast"}, "hosttune_policy.profile: must be one of latency, throughput"),
    ([1], "hosttune_policy: must be a mapping, got list"),
    # every mistake, one line each (the host's check; the controller's runs first in the playbooks)
    (THREE_MISTAKES, "\n".join(f"hosttune: error: {said}" for said in THREE_MISTAKES_SAID[:1])),
])
def test_an_inline_policy_error_names_the_variable_not_a_temp_file(tmp_path, policy, says):
    """The modules write an inline policy to a temporary file for hosttune; a real hosttune's error
    about it names hosttune_policy.<field>, not that file."""
    sys.path.insert(0, os.path.join(REPO, "plugins", "module_utils"))
    try:
        import hosttune_run
    finally:
        sys.path.pop(0)
    path = hosttune_run.policy_file(policy)
    try:
        argv = [os.path.join(BIN, "hosttune"), "plan", "--json", "--root", "/", "--policy", path]
        proc = subprocess.run([sys.executable, "-m", "hosttune", *argv[1:]], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": REPO})
        assert proc.returncode == 2 and path in proc.stderr, proc.stderr
        message = hosttune_run.name_the_policy(proc.stderr.strip(), argv)
    finally:
        os.unlink(path)
    assert says in message and path not in message and "hosttune-policy-" not in message, message
    if policy is THREE_MISTAKES:
        lines = message.splitlines()
        assert len(lines) == 3 and all(line.startswith(f"hosttune: error: {said}")
                                       for line, said in zip(lines, THREE_MISTAKES_SAID)), lines
    # a configuration file the user wrote keeps its own name
    assert hosttune_run.name_the_policy("hosttune: error: /etc/h.yaml: profile: x", ["h", "--policy", "/etc/h.yaml"]) \
        == "hosttune: error: /etc/h.yaml: profile: x"
