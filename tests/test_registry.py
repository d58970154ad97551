"""The area registry is the one list of areas: a throwaway area added with one registry entry is
validated, planned, applied, verified, restored and printed with no other change; the lists that
cannot import the registry (the roles' choices, the docs, the README's policy block) are pinned to
it here; the area contract is checked when the registry is built."""

import glob
import importlib.util
import json
import os
import re
import textwrap
import types

import pytest
import yaml

from hosttune import areas, cli, discovery, plan, policy
from hosttune.areas.base import Area
from hosttune.errors import PolicyError
from hosttune.sysfs import HostFS
from tests.conftest import REPO

# A sysctl-like area written the way a contributor would write hosttune/areas/ksm.py: one value
# under /sys, its own policy key, nothing else.
KSM = textwrap.dedent('''\
    """Kernel samepage merging: run (1) or stop (0) ksmd."""
    from hosttune.areas.base import AreaItems, Field, SysfsValue, skipped, unsupported

    NAME = "ksm"
    BOOT = False
    RUN = "/sys/kernel/mm/ksm/run"
    POLICY = (Field("ksm.run", 0, "int", choices=(0, 1, 2), doc="0 stop | 1 run | 2 unmerge"),)


    def discover(fs, features, cpus):
        value = fs.read(RUN)
        return {NAME: unsupported("no ksm") if value is None else {"status": "ok", "run": value.strip()}}


    def show(features):
        return [f"ksm: run={features[NAME]['run']}"]


    def plan(ctx):
        if ctx.features.get(NAME, {}).get("status") != "ok":
            return unsupported("no ksm")
        return {"status": "planned", "run": str(ctx.policy["ksm"]["run"])}


    def describe(setting):
        return f"write {setting['run']} to {RUN}"


    def items(setting, plan, host):
        return AreaItems(NAME, [SysfsValue(NAME, "ksmd", RUN, value=setting["run"])])


    def refresh(host, records):
        return []
''')


@pytest.fixture
def registry():
    """areas.use, put back afterwards."""
    saved = [area.module for area in areas.REGISTRY]
    yield areas.use
    areas.use(saved)


@pytest.fixture
def ksm(tmp_path, registry):
    """The throwaway area, registered with one entry; a synthetic host tree that has ksm."""
    source = tmp_path / "ksm.py"
    source.write_text(KSM)
    spec = importlib.util.spec_from_file_location("hosttune_test_ksm", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry([*(a.module for a in areas.REGISTRY), module])  # the one registry entry
    from tests.treegen import Spec, write_tree

    root = write_tree(str(tmp_path / "host"), Spec())
    os.makedirs(os.path.join(root, "sys/kernel/mm/ksm"))
    with open(os.path.join(root, "sys/kernel/mm/ksm/run"), "w") as f:
        f.write("1\n")
    return root


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _ksm_value(root):
    with open(os.path.join(root, "sys/kernel/mm/ksm/run")) as f:
        return f.read().strip()


def test_a_new_area_needs_one_module_and_one_registry_entry(ksm, capsys):
    root = ksm
    # the policy: its section has its default, takes a good value, refuses a bad one naming the field
    assert policy.validate({})["ksm"] == {"run": 0}
    assert policy.validate({"ksm": {"run": 2}, "required": ["ksm"]})["ksm"] == {"run": 2}
    for bad, field, text in (({"ksm": {"run": 5}}, "ksm.run", "must be one of 0, 1, 2, got 5"),
                             ({"ksm": {"run": "1"}}, "ksm.run", "must be an integer"),
                             ({"ksm": {"runs": 1}}, "ksm.runs", "unknown key (known: run)")):
        with pytest.raises(PolicyError) as info:
            policy.validate(bad)
        assert info.value.where == field and text in str(info.value)
    assert "ksm: {run: 0}  # 0 stop | 1 run | 2 unmerge" in policy.docs_block()
    # the plan
    p = plan.make_plan(discovery.discover(HostFS.open(root)), policy.validate({}))
    assert p["settings"]["ksm"] == {"status": "planned", "run": "0"}
    code, out, _ = _cli(capsys, "plan", "--root", root)
    assert code == 0 and "  ksm         write 0 to /sys/kernel/mm/ksm/run" in out.splitlines()
    code, out, _ = _cli(capsys, "topology", "--root", root)
    assert code == 0 and "ksm: run=1" in out
    # apply --only ksm changes that value and nothing else; verify sees it; restore puts it back
    code, out, _ = _cli(capsys, "apply", "--root", root, "--only", "ksm", "--json")
    report = json.loads(out)
    assert code == 0 and [(c["area"], c["path"]) for c in report["changes"]] == [("ksm", "/sys/kernel/mm/ksm/run")]
    assert _ksm_value(root) == "0"
    code, out, _ = _cli(capsys, "verify", "--root", root, "--only", "ksm", "--json")
    rows = json.loads(out)["settings"]
    assert code == 0 and [(r["area"], r["status"]) for r in rows] == [("ksm", "ok")]
    code, out, _ = _cli(capsys, "restore", "--root", root, "--json")
    assert code == 0 and json.loads(out)["restored"] == ["/sys/kernel/mm/ksm/run"]
    assert _ksm_value(root) == "1"
    # a policy file with the new section, through the CLI
    path = os.path.join(os.path.dirname(root), "p.yaml")
    with open(path, "w") as f:
        f.write("ksm: {run: 7}\n")
    code, _, err = _cli(capsys, "plan", "--root", root, "--policy", path)
    assert code == 2 and err == f"hosttune: error: {path}: ksm.run: must be one of 0, 1, 2, got 7\n"


def test_only_accepts_the_registry_and_nothing_else(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["apply", "--root", "/nonexistent", "--only", "gpu"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid choice: 'gpu'" in err
    assert all(f"'{name}'" in err for name in areas.NAMES)


# -- the contract -----------------------------------------------------------------------------------
def _module(name, **parts):
    module = types.ModuleType(f"hosttune_test_{name}")
    functions = ("discover", "show", "plan", "describe", "items", "refresh")
    base = {"NAME": name, "BOOT": False, "POLICY": (), **{p: (lambda *a: None) for p in functions}}
    vars(module).update({**base, **parts})
    return module


@pytest.mark.parametrize("part", Area.REQUIRED)
def test_a_missing_part_is_an_error_naming_the_module(registry, part):
    module = _module("broken")
    delattr(module, part)
    before = areas.REGISTRY
    with pytest.raises(TypeError) as info:
        registry([*(a.module for a in areas.REGISTRY), module])
    assert str(info.value).startswith(f"area module hosttune_test_broken: {part} is missing")
    assert areas.REGISTRY is before  # nothing half-registered


@pytest.mark.parametrize("parts, message", [
    ({"BOOT": "no"}, "BOOT must be true or false"),
    ({"NAME": 3}, "NAME must be a name"),
    ({"POLICY": ["x"]}, "POLICY must be a tuple of Field"),
    ({"plan": "later"}, "plan must be a function"),
    ({"reboot_required": True}, "reboot_required must be a function"),
])
def test_a_mistyped_part_is_an_error_naming_the_module(parts, message):
    with pytest.raises(TypeError) as info:
        Area.of(_module("odd", **parts))
    assert f"area module hosttune_test_odd: {message}" in str(info.value)


def test_optional_parts_have_defaults():
    area = Area.of(_module("plain"))
    assert area.plan_fields({}) == {} and area.summary({}) == [] and area.verify_rows({}, None, None) == []
    assert area.reboot_required({}, None) is False
    kernel = areas.get("kernel_args")  # the one area that has them all
    assert kernel.reboot_required is kernel.module.reboot_required


def test_two_areas_with_one_name_are_refused(registry):
    with pytest.raises(TypeError, match="area names must differ"):
        registry([*(a.module for a in areas.REGISTRY), _module("thp")])


def test_a_key_declared_twice_is_an_error_naming_it(registry):
    from hosttune.areas.base import Field

    registry([*(a.module for a in areas.REGISTRY), _module("again", POLICY=(Field("irqs.pin", True, "bool"),))])
    with pytest.raises(TypeError, match="policy field irqs.pin is declared twice"):
        policy.validate({})


def test_a_default_that_fails_its_own_type_is_an_error_naming_it(registry):
    from hosttune.areas.base import Field

    registry([*(a.module for a in areas.REGISTRY), _module("odd", POLICY=(Field("odd.level", "high", "int"),))])
    with pytest.raises(TypeError, match="policy field odd.level: the latency default must be an integer"):
        policy.validate({})


def test_nothing_asks_an_area_whether_it_has_a_part():
    for path in ("hosttune/engine.py", "hosttune/areas/__init__.py", "hosttune/plan.py"):
        assert "hasattr(" not in open(os.path.join(REPO, path)).read(), path


def test_plan_and_policy_name_no_area():
    for path in ("hosttune/plan.py", "hosttune/policy.py"):
        code = open(os.path.join(REPO, path)).read()
        for name in areas.NAMES:
            assert not re.search(rf"""["']{name}["']""", code), (path, name)


# -- lists that cannot import the registry ----------------------------------------------------------
def _role_areas():
    """{role: its area list}: a `<role>_areas` variable (its choices and default) or a literal
    `areas:` of a hosttune.tuning.apply task."""
    found = {}
    for specs_path in sorted(glob.glob(os.path.join(REPO, "roles", "*", "meta", "argument_specs.yml"))):
        role = specs_path.split(os.sep)[-3]
        options = yaml.safe_load(open(specs_path))["argument_specs"]["main"]["options"]
        var = options.get(f"{role}_areas")
        if var:
            defaults = yaml.safe_load(open(os.path.join(REPO, "roles", role, "defaults", "main.yml")))
            assert var["choices"] == var["default"] == defaults[f"{role}_areas"], role
            found[role] = var["choices"]
    for tasks_path in sorted(glob.glob(os.path.join(REPO, "roles", "*", "tasks", "*.yml"))):
        role = tasks_path.split(os.sep)[-3]
        for task in yaml.safe_load(open(tasks_path)) or []:
            areas_arg = (task.get("hosttune.tuning.apply") or {}).get("areas")
            if isinstance(areas_arg, list):
                found.setdefault(role, []).extend(areas_arg)
    return found


def test_every_area_is_applied_by_exactly_one_role():
    by_role = _role_areas()
    applied = [name for names in by_role.values() for name in names]
    assert sorted(applied) == sorted(areas.NAMES), by_role
    for role, names in by_role.items():
        # the role's own docs and the collection guide name what it applies
        only = "--only " + " ".join(names)
        readme = open(os.path.join(REPO, "roles", role, "README.md")).read()
        assert only in readme, (role, only)
        row = next(line for line in open(os.path.join(REPO, "docs", "ansible.md")) if line.startswith(f"| `{role}` |"))
        assert only in row, (role, row)


def test_the_apply_module_keeps_no_area_list():
    """It runs on the host inside Ansible and cannot import the registry: it passes the names to
    the hosttune there, which refuses an unknown one (test_only_accepts_the_registry_and_nothing_else)."""
    source = open(os.path.join(REPO, "plugins", "modules", "apply.py")).read()
    doc = yaml.safe_load(re.search(r'DOCUMENTATION = r"""(.*?)"""', source, re.S).group(1))
    assert "choices" not in doc["options"]["areas"]
    assert not any(f'"{name}"' in source for name in areas.NAMES)


def test_architecture_lists_the_registry():
    text = open(os.path.join(REPO, "docs", "ARCHITECTURE.md")).read()
    assert f"REGISTRY = ({', '.join(areas.NAMES)})" in text
    assert re.search(r"^AREAs: `([^`]*)`", text, re.M).group(1) == " ".join(areas.NAMES)


def _readme_policy():
    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index("## Policy"):]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def test_readme_policy_block_is_the_declared_one():
    block = _readme_policy()
    assert block == policy.docs_block(), "README.md's policy block is stale: paste policy.docs_block()"
    # and it is a policy: the defaults, as hosttune reads them
    assert policy.validate(yaml.safe_load(block)) == policy.validate({})


def test_each_area_has_its_keys_in_the_readme():
    block = _readme_policy()
    for area in areas.REGISTRY:
        for f in area.POLICY:
            key = f.path.rpartition(".")[2]
            assert re.search(rf"\b{re.escape(key)}: ", block), (area.NAME, f.path)
            assert not f.doc or f.doc in block, (area.NAME, f.path, f.doc)
