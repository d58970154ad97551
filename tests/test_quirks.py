"""Real fleets are not our guests: one synthetic tree per kernel or firmware quirk (tests/treegen.py
`quirks`), each read the way the kernel documents it. `topology`, `plan` and `apply --dry-run`
succeed on every one, and give the same picture as a tree without the quirk where the quirk only
changes how the kernel prints it."""

import json
import os

import pytest

from tests.conftest import run_cli
from tests.test_areas import standins  # noqa: F401 - fixture
from tests.treegen import Spec, write_tree

SHAPE = dict(sockets=2, cores_per_node=4, threads=2, offline=[7])


def topology(root):
    return json.loads(run_cli("topology", "--root", root, "--json", check=0).stdout)


def picture(t):
    """What placement depends on."""
    return {"cpus": [(c["id"], c["online"], c["socket"], c["core"], c["node"], c["siblings"]) for c in t["cpus"]],
            "nodes": [(n["id"], n["cpus"]) for n in t["nodes"]], "isolated": t["isolated"],
            "nohz_full": t["nohz_full"], "cpufreq": t["cpufreq"].get("policies") and
            [(p["id"], p["cpus"], p["governor"], p["max_khz"]) for p in t["cpufreq"]["policies"]]}


@pytest.mark.parametrize("quirk", ["masks_only", "nul_empty", "no_global_online", "percpu_cpufreq"])
def test_kernel_quirk_reads_as_the_same_host(tmp_path, quirk):
    plain = write_tree(str(tmp_path / "plain"), Spec(**SHAPE))
    odd = write_tree(str(tmp_path / quirk), Spec(**SHAPE, quirks={quirk}))
    assert picture(topology(odd)) == picture(topology(plain))
    text = run_cli("topology", "--root", odd, check=0).stdout
    assert "offline CPUs: 7" in text
    plan_odd = json.loads(run_cli("plan", "--root", odd, "--json", check=0).stdout)
    plan_plain = json.loads(run_cli("plan", "--root", plain, "--json", check=0).stdout)
    for key in ("nodes", "housekeeping", "isolated", "offline", "kernel_args", "instances"):
        assert plan_odd[key] == plan_plain[key], key
    dry = run_cli("apply", "--root", odd, "--dry-run", "--json")
    assert dry.returncode == 3, dry.stderr  # done, reboot required
    assert {c["area"] for c in json.loads(dry.stdout)["changes"]} >= {"cpufreq", "sysctls", "irqs"}


def test_pre_43_cpufreq_is_applied_in_the_per_cpu_directories(tmp_path):
    root = write_tree(str(tmp_path / "old"), Spec(sockets=1, cores_per_node=2, quirks={"percpu_cpufreq"}))
    run_cli("apply", "--root", root, check=3)
    with open(os.path.join(root, "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor")) as f:
        assert f.read() == "performance"
    with open(os.path.join(root, "sys/devices/system/cpu/cpu1/cpufreq/scaling_min_freq")) as f:
        assert f.read() == "2100000"
    assert not os.path.exists(os.path.join(root, "sys/devices/system/cpu/cpufreq/policy1"))
    assert run_cli("verify", "--root", root).returncode == 3  # only the reboot is pending


def test_mask_only_capture_round_trips(tmp_path):
    root = write_tree(str(tmp_path / "old"), Spec(**SHAPE, quirks={"masks_only"}))
    out = tmp_path / "old.tar.gz"
    run_cli("capture", "--root", root, "-o", str(out), check=0)
    assert picture(topology(str(out))) == picture(topology(root))


@pytest.mark.parametrize("quirk, problem", [("numa_overlap", "is in node 0 and node 1"),
                                            ("cpu_in_no_node", "are in no node")])
def test_broken_numa_tables_are_ignored_never_overlapping_instances(tmp_path, quirk, problem):
    root = write_tree(str(tmp_path / quirk), Spec(sockets=2, cores_per_node=4, quirks={quirk}))
    text = run_cli("topology", "--root", root, check=0).stdout
    assert "warning: NUMA nodes 0, 1 ignored" in text and problem in text
    plan = json.loads(run_cli("plan", "--root", root, "--json", check=0).stdout)
    assert len(plan["instances"]) == 1 and any(problem in w for w in plan["warnings"])
    seen = set()
    for inst in plan["instances"]:
        assert not seen & set(inst["cpus"])
        seen |= set(inst["cpus"])
    assert "warning: NUMA nodes 0-1 ignored" in run_cli("plan", "--root", root, check=0).stdout
    assert run_cli("apply", "--root", root, "--dry-run").returncode == 3  # staged: reboot required


def test_node_spanning_sockets_is_a_warning_only(tmp_path):
    root = write_tree(str(tmp_path / "span"), Spec(sockets=2, cores_per_node=4))
    with open(os.path.join(root, "sys/devices/system/cpu/cpu0/topology/physical_package_id"), "w") as f:
        f.write("1")  # CPU 0 (node 0) on socket 1 with node 1's CPUs
    text = run_cli("topology", "--root", root, check=0).stdout
    assert "warning: NUMA: node 0 spans sockets 0, 1" in text
    plan = json.loads(run_cli("plan", "--root", root, "--json", check=0).stdout)
    assert [i["cpus_list"] for i in plan["instances"]] == ["1-3", "5-7"]


def _with_tuned(root, active=True):
    for path, text in (("usr/sbin/tuned", ""), ("etc/tuned/active_profile", "throughput-performance"),
                       ("etc/systemd/system/multi-user.target.wants/tuned.service", "")):
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write(text + "\n")
    if active:
        os.makedirs(os.path.join(root, "run/systemd/units"), exist_ok=True)
        os.symlink("/nonexistent/invocation-id", os.path.join(root, "run/systemd/units/invocation:tuned.service"))


def test_tuned_is_reported_and_refused_or_kept_by_policy(tree, tmp_path):
    _with_tuned(tree)
    assert "managers: tuned running, enabled, profile throughput-performance" in run_cli(
        "topology", "--root", tree, check=0).stdout
    plan = json.loads(run_cli("plan", "--root", tree, "--json", check=0).stdout)
    assert plan["settings"]["managers"]["stop"] == ["tuned"]
    refuse = tmp_path / "refuse.yaml"
    refuse.write_text("managers: {tuned: refuse}\n")
    proc = run_cli("plan", "--root", tree, "--policy", str(refuse))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "managers.tuned" in proc.stderr and "tuned is running (profile throughput-performance)" in proc.stderr
    keep = tmp_path / "keep.yaml"
    keep.write_text("managers: {tuned: keep}\n")
    text = run_cli("plan", "--root", tree, "--policy", str(keep), check=0).stdout
    assert "warning: managers: tuned is running (profile throughput-performance) and kept" in text


def test_tuned_stopped_is_a_change_verified_and_restored(tree, standins):  # noqa: F811
    folder, log = standins
    _with_tuned(tree)
    (folder / "systemctl.json").write_text(json.dumps({"tuned": {"active": True, "enabled": True},
                                                       "irqbalance": {"active": True, "enabled": True}}))
    run_cli("apply", "--root", tree, check=3)
    assert json.loads((folder / "systemctl.json").read_text())["tuned"] == {"active": False, "enabled": False}
    assert ["systemctl", "disable", "--now", "tuned"] in log()
    ok = json.loads(run_cli("verify", "--root", tree, "--json", "--only", "managers").stdout)
    assert [(r["name"], r["status"]) for r in ok["settings"]] == [("tuned service", "ok")]
    state = json.loads((folder / "systemctl.json").read_text())
    state["tuned"]["active"] = True  # someone started it again
    (folder / "systemctl.json").write_text(json.dumps(state))
    back = run_cli("verify", "--root", tree, "--json", "--only", "managers")
    assert back.returncode == 1 and json.loads(back.stdout)["settings"][0]["status"] == "drift"
    run_cli("restore", "--root", tree, check=3)  # the GRUB drop-in is gone too: reboot required
    assert json.loads((folder / "systemctl.json").read_text())["tuned"] == {"active": True, "enabled": True}


def test_this_machines_topology_and_demo_path():
    """scripts/demo's commands on the machine the tests run on (no GRUB, no cpufreq here)."""
    for argv in (["topology"], ["plan"], ["apply", "--dry-run"]):
        proc = run_cli(*argv)
        assert proc.returncode == 0, (argv, proc.stderr)
