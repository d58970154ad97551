"""The instances keys `hosttune tune` chooses, the hardware class, and the overlay that carries the
choice to plan, agent and roles (issue 29): each key reaches the rendered OpenVINO settings, bad
overlays are refused naming the field, classes follow the hardware only."""

import json
import os

import pytest
import yaml

from hosttune import discovery, hwclass, plan, policy
from hosttune.errors import PolicyError
from hosttune.sysfs import HostFS
from tests.conftest import FIXTURES, run_cli


def topo_of(root):
    return discovery.discover(HostFS.open(root))


def make(root, pol=None):
    return plan.make_plan(topo_of(root), policy.validate(pol or {}))


def inst0(root, **instances):
    return make(root, {"instances": instances})["instances"][0]


# -- each key reaches the instance's OpenVINO settings, nireq and OVMS config.json ----------------
def test_hint_overrides_the_profile(make_tree):
    tree = make_tree(sockets=2, cores_per_node=4)
    latency = inst0(tree)
    assert latency["hint"] == "latency" and latency["openvino"]["PERFORMANCE_HINT"] == "LATENCY"
    thr = inst0(tree, hint="throughput")  # latency profile, throughput instances
    assert thr["hint"] == "throughput" and "PERFORMANCE_HINT" not in thr["openvino"]
    assert thr["openvino"]["NUM_STREAMS"] == 3 and thr["streams"] == 3  # 3 cores, 1 CPU per stream
    back = make(tree, {"profile": "throughput", "instances": {"hint": "latency"}})["instances"][0]
    assert back["openvino"]["PERFORMANCE_HINT"] == "LATENCY" and back["streams"] == 1


def test_streams_and_threads_per_stream(make_tree):
    tree = make_tree(sockets=1, cores_per_node=9)  # 8 isolated cores
    two = inst0(tree, hint="throughput", streams=2)
    assert (two["openvino"]["NUM_STREAMS"], two["openvino"]["INFERENCE_NUM_THREADS"]) == (2, 8)  # 4 each
    pinned = inst0(tree, hint="throughput", streams=3, threads_per_stream=2)
    assert (pinned["openvino"]["NUM_STREAMS"], pinned["openvino"]["INFERENCE_NUM_THREADS"]) == (3, 6)
    config = pinned["ovms"]["config"]["model_config_list"][0]["config"]
    assert config["plugin_config"]["NUM_STREAMS"] == "3" and config["plugin_config"]["INFERENCE_NUM_THREADS"] == "6"
    # the latency stream takes threads_per_stream threads
    assert inst0(tree, threads_per_stream=3)["openvino"]["INFERENCE_NUM_THREADS"] == 3


def test_nireq_is_taken_as_given(make_tree):
    tree = make_tree(sockets=2, cores_per_node=4)
    assert inst0(tree)["ovms"]["nireq"] == 1
    inst = inst0(tree, nireq=7)
    assert inst["ovms"]["nireq"] == 7
    assert inst["ovms"]["config"]["model_config_list"][0]["config"]["nireq"] == 7


def test_smt_switches_hyper_threading(make_tree):
    tree = make_tree(sockets=1, cores_per_node=4, threads=2)  # 3 isolated cores, 6 CPUs
    assert inst0(tree)["openvino"]["ENABLE_HYPER_THREADING"] is False  # latency: never by default
    on = inst0(tree, smt=True)
    assert on["openvino"]["ENABLE_HYPER_THREADING"] is True and on["openvino"]["INFERENCE_NUM_THREADS"] == 6
    assert on["ovms"]["plugin_config"]["ENABLE_HYPER_THREADING"] == "YES"
    thr = inst0(tree, hint="throughput", smt=True)
    assert thr["openvino"]["NUM_STREAMS"] == 6  # one per logical CPU
    off = inst0(tree, hint="throughput", smt=False)
    assert off["openvino"]["ENABLE_HYPER_THREADING"] is False and off["openvino"]["NUM_STREAMS"] == 3
    # null and throughput: the siblings where there are (the rule before these keys)
    assert inst0(tree, hint="throughput")["openvino"]["ENABLE_HYPER_THREADING"] is True


def test_two_instances_per_node_split_the_cores(make_tree):
    tree = make_tree(sockets=2, cores_per_node=5, threads=2)  # 4 isolated cores per node
    p = make(tree, {"instances": {"per_node": 2}})
    rows = [(i["name"], i["node"], i["cpus_list"], i["port"], i["grpc_port"], i["cores"]) for i in p["instances"]]
    assert rows == [("node0a", 0, "1-2,11-12", 9000, 9100, 2), ("node0b", 0, "3-4,13-14", 9001, 9101, 2),
                    ("node1a", 1, "6-7,16-17", 9002, 9102, 2), ("node1b", 1, "8-9,18-19", 9003, 9103, 2)]
    assert [n["instances"] for n in p["nodes"]] == [["node0a", "node0b"], ["node1a", "node1b"]]
    assert p["nodes"][0]["instance"] == "node0a"
    assert all(i["openvino"]["INFERENCE_NUM_THREADS"] == 2 for i in p["instances"])  # half the cores each
    assert "node1b: cpus 8-9,18-19" in plan.render(p)


def test_inference_precision_and_model_reach_the_instance(make_tree):
    inst = inst0(make_tree(sockets=2, cores_per_node=4), inference_precision="bf16", model="resnet:2")
    assert inst["openvino"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert inst["model"] == "resnet" and inst["models"] == [{"name": "resnet", "version": 2}]


# -- cross-checks name the field -------------------------------------------------------------------
@pytest.mark.parametrize("spec, instances, field, words", [
    ({}, {"hint": "throughput", "streams": 4}, "instances.streams", "4 streams x 1 threads need 4 CPUs; the instance has 3"),
    ({}, {"hint": "throughput", "streams": 2, "threads_per_stream": 2}, "instances.streams", "need 4 CPUs"),
    ({"threads": 2}, {"hint": "throughput", "streams": 4, "smt": False}, "instances.streams",
     "the instance has 3 (SMT siblings not used)"),
    ({}, {"streams": 2}, "instances.streams", "the latency hint runs 1 stream"),
    ({}, {"smt": True}, "instances.smt", "no SMT siblings"),
    ({"cores_per_node": 2}, {"per_node": 2}, "instances.per_node", "2 instances per node need 2 cores; node 0 has 1"),
])
def test_settings_that_do_not_fit_are_refused(make_tree, spec, instances, field, words):
    with pytest.raises(PolicyError) as info:
        make(make_tree(**{"sockets": 2, "cores_per_node": 4, **spec}), {"instances": instances})
    assert info.value.where == field and words in info.value.message, (info.value.where, info.value.message)


@pytest.mark.parametrize("instances, field", [
    ({"hint": "fast"}, "instances.hint"), ({"streams": 0}, "instances.streams"),
    ({"nireq": 1025}, "instances.nireq"), ({"nireq": 0}, "instances.nireq"), ({"smt": "yes"}, "instances.smt"),
    ({"per_node": 3}, "instances.per_node"), ({"per_node": True}, "instances.per_node"),
])
def test_bad_values_are_refused_naming_the_field(instances, field):
    with pytest.raises(PolicyError) as info:
        policy.validate({"instances": instances})
    assert info.value.where == field


def test_nireq_bound_is_serves():
    from hosttune.serve import MAX_NIREQ
    assert policy.MAX_NIREQ == MAX_NIREQ
    assert policy.validate({"instances": {"nireq": MAX_NIREQ}})["instances"]["nireq"] == MAX_NIREQ


# -- hardware classes --------------------------------------------------------------------------------
def test_equal_hardware_is_one_class(make_tree):
    a = topo_of(make_tree(sockets=2, cores_per_node=4, hostname="a"))
    b = topo_of(make_tree(sockets=2, cores_per_node=4, hostname="b"))
    assert hwclass.class_id(a) == hwclass.class_id(b)
    assert hwclass.class_id(a) == hwclass.class_id(a.to_dict())  # the JSON form gives the same id
    assert len(hwclass.class_id(a)) == 14 and policy.CLASS_ID_RE.fullmatch(hwclass.class_id(a))


def test_hosttunes_own_kernel_arguments_keep_the_class(make_tree):
    """A host keeps its class when hosttune's isolcpus/nohz_full/... take effect; nosmt or
    mitigations=off make another class."""
    roots = [make_tree(sockets=2, cores_per_node=4) for _ in range(3)]
    lines = ["quiet", "quiet isolcpus=managed_irq,domain,1-3,5-7 nohz_full=1-3,5-7 rcu_nocbs=1-3 irqaffinity=0,4",
             "quiet mitigations=off"]
    for root, line in zip(roots, lines):
        with open(os.path.join(root, "proc", "cmdline"), "w") as f:
            f.write(line + "\n")
    ids = [hwclass.class_id(topo_of(r)) for r in roots]
    assert ids[0] == ids[1] != ids[2]
    assert hwclass.describe(topo_of(roots[2])).endswith("; mitigations=off")


@pytest.mark.parametrize("other", [dict(sockets=1, cores_per_node=8), dict(sockets=2, cores_per_node=4, threads=2),
                                   dict(sockets=2, cores_per_node=4, offline=[3]),
                                   dict(sockets=2, cores_per_node=4, memoryless=[1])])
def test_different_hardware_is_another_class(make_tree, other):
    base = hwclass.class_id(topo_of(make_tree(sockets=2, cores_per_node=4)))
    assert hwclass.class_id(topo_of(make_tree(**other))) != base


def test_memory_rounds_up_to_an_installed_size():
    assert [hwclass._memory_gib(int(g * 2**30)) for g in (62.8, 63.9, 64, 94.2, 1.9, 0)] == [64, 64, 64, 96, 2, 0]


def test_captured_machines_are_distinct_classes():
    ids = {name: hwclass.class_id(topo_of(os.path.join(FIXTURES, name + ".tar.gz")))
           for name in ("default", "smt4n", "sparse", "memoryless", "offline")}
    assert len(set(ids.values())) == len(ids), ids
    # and a capture's class is the one its plan and `hosttune topology` show
    out = run_cli("topology", "--root", os.path.join(FIXTURES, "default.tar.gz"), "--json", check=0)
    assert json.loads(out.stdout)["hw_class"]["id"] == ids["default"]


# -- the overlay ---------------------------------------------------------------------------------
DEFAULT_FIXTURE = os.path.join(FIXTURES, "default.tar.gz")


def overlay(class_id, decision="tuned", **instances):
    return {"format": policy.OVERLAY_FORMAT, "classes": {class_id: {
        "tuned_on": "guest", "objective": {"name": "throughput", "slo_p99_ms": 50}, "decision": decision,
        "instances": {"hint": "throughput", "streams": 2, "threads_per_stream": 1, "nireq": 4, "smt": False,
                      "per_node": 1, "inference_precision": None, "model": "sample", **instances}}}}


def write(tmp_path, doc, name="overlay.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_plan_overlay_round_trip(tmp_path):
    """hosttune plan --overlay: the capture's class entry changes the rendered instance settings; a
    class that is not this host's, and default-kept, change nothing."""
    cid = hwclass.class_id(topo_of(DEFAULT_FIXTURE))
    base = json.loads(run_cli("plan", "--root", DEFAULT_FIXTURE, "--json", check=0).stdout)
    assert base["hw_class"]["id"] == cid and base["tuned"] is None
    assert base["instances"][0]["openvino"]["PERFORMANCE_HINT"] == "LATENCY"
    tuned = json.loads(run_cli("plan", "--root", DEFAULT_FIXTURE, "--json", "--overlay",
                               write(tmp_path, overlay(cid)), check=0).stdout)
    inst = tuned["instances"][0]
    assert inst["openvino"] == {"NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2, "ENABLE_CPU_PINNING": True,
                                "ENABLE_HYPER_THREADING": False}
    assert inst["ovms"]["nireq"] == 4 and inst["ovms"]["config"]["model_config_list"][0]["config"]["nireq"] == 4
    assert tuned["tuned"]["decision"] == "tuned" and tuned["tuned"]["changed"]["streams"] == {"policy": None, "overlay": 2}
    assert tuned["policy"]["instances"]["streams"] == 2  # the plan records the policy it used
    text = run_cli("plan", "--root", DEFAULT_FIXTURE, "--overlay", write(tmp_path, overlay(cid)), check=0).stdout
    line = next(x for x in text.splitlines() if x.startswith("tune overlay: "))
    assert f"hardware class {cid}" in text and line.startswith("tune overlay: tuned on guest: ")
    assert {'hint="throughput"', "streams=2", "nireq=4", "smt=false"} <= set(line.split(": ")[-1].split(", "))
    for doc in (overlay("c-000000000000"), overlay(cid, decision="default-kept")):
        other = json.loads(run_cli("plan", "--root", DEFAULT_FIXTURE, "--json", "--overlay",
                                   write(tmp_path, doc), check=0).stdout)
        assert other["instances"] == base["instances"]


def test_overlay_wins_but_its_nulls_leave_the_policy():
    cid = "c-0123456789ab"
    pol = policy.validate({"instances": {"threads_per_stream": 4, "inference_precision": "f32"},
                           "tune_overlay": overlay(cid, threads_per_stream=1, inference_precision=None)})
    merged, record = policy.apply_overlay(pol, cid)
    assert merged["instances"]["threads_per_stream"] == 1  # the measured value for this class
    assert merged["instances"]["inference_precision"] == "f32"  # null: tune did not choose it
    assert record["changed"]["threads_per_stream"] == {"policy": 4, "overlay": 1}
    assert pol["instances"]["threads_per_stream"] == 4  # the policy itself is not changed


@pytest.mark.parametrize("doc, where", [
    ({"format": "x", "classes": {}}, "format"),
    ({"format": policy.OVERLAY_FORMAT, "classes": {}, "extra": 1}, "extra"),
    ({"format": policy.OVERLAY_FORMAT, "classes": []}, "classes"),
    ({"format": policy.OVERLAY_FORMAT, "classes": {"host1": {"decision": "tuned"}}}, "classes.host1"),
    ({"format": policy.OVERLAY_FORMAT, "classes": {"c-0123456789ab": {}}}, "classes.c-0123456789ab.decision"),
    ({"format": policy.OVERLAY_FORMAT, "classes": {"c-0123456789ab": {"decision": "best"}}},
     "classes.c-0123456789ab.decision"),
    (overlay("c-0123456789ab", streams=0), "classes.c-0123456789ab.instances.streams"),
    (overlay("c-0123456789ab", hint="fast"), "classes.c-0123456789ab.instances.hint"),
    (overlay("c-0123456789ab", nireq=5000), "classes.c-0123456789ab.instances.nireq"),
    (overlay("c-0123456789ab", per_node=4), "classes.c-0123456789ab.instances.per_node"),
    (overlay("c-0123456789ab", model="../etc"), "classes.c-0123456789ab.instances.model"),
    (overlay("c-0123456789ab", base_port=80), "classes.c-0123456789ab.instances.base_port"),
    ({"format": policy.OVERLAY_FORMAT, "classes": {"c-0123456789ab": {"decision": "tuned", "tuned_on": 5}}},
     "classes.c-0123456789ab.tuned_on"),
])
def test_bad_overlays_are_refused_naming_the_field(tmp_path, doc, where):
    path = write(tmp_path, doc)
    with pytest.raises(PolicyError) as info:
        policy.load_overlay(path)
    assert info.value.where == f"{path}: {where}", info.value.where
    # inline in a policy: under tune_overlay
    with pytest.raises(PolicyError) as info:
        policy.validate({"tune_overlay": doc})
    assert info.value.where == f"tune_overlay.{where}"
    # through the CLI: one line naming the file and the field, exit 2
    proc = run_cli("plan", "--root", DEFAULT_FIXTURE, "--overlay", path)
    assert proc.returncode == 2 and f"{path}: {where}" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_an_overlay_that_does_not_fit_names_the_field(tmp_path):
    cid = hwclass.class_id(topo_of(DEFAULT_FIXTURE))
    proc = run_cli("plan", "--root", DEFAULT_FIXTURE, "--overlay", write(tmp_path, overlay(cid, streams=5)))
    assert proc.returncode == 2 and "instances.streams" in proc.stderr and "5 streams" in proc.stderr


def test_a_missing_overlay_file_is_one_line(tmp_path):
    proc = run_cli("plan", "--root", DEFAULT_FIXTURE, "--overlay", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr


# -- fleet -----------------------------------------------------------------------------------------
def test_fleet_plan_shows_the_class_and_applies_the_inventorys_overlay(tmp_path):
    """hosttune_tune_overlay in the inventory (as the roles take it): `fleet plan` gives each host
    its class's tuned settings and shows the class of every host."""
    import subprocess
    import sys

    from tests.fleet.conftest import REPO, capture_tree, write_inventory
    from tests.treegen import Spec, write_tree

    caps = tmp_path / "caps"
    caps.mkdir()
    specs = {"n1": Spec(hostname="one"), "n2": Spec(hostname="two"), "n3": Spec(hostname="three", sockets=1)}
    for name, spec in specs.items():
        write_tree(str(tmp_path / name), spec)
        capture_tree(str(tmp_path / name), str(caps / f"{name}.tar.gz"))
    same, other = (hwclass.class_id(topo_of(str(caps / f"{n}.tar.gz"))) for n in ("n1", "n3"))
    path = write(tmp_path, overlay(same))
    inv = write_inventory(tmp_path / "inv", {n: {"ansible_host": "192.0.2.1"} for n in specs},
                          groups={"all_hosts": list(specs)}, group_vars={"all_hosts": {"hosttune_tune_overlay": path}})
    proc = subprocess.run([sys.executable, "-m", "hosttune", "fleet", "plan", "-i", inv, "--captures", str(caps),
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    hosts = {h["host"]: h["result"] for h in json.loads(proc.stdout)["hosts"]}
    assert [hosts[n]["hw_class"]["id"] for n in ("n1", "n2", "n3")] == [same, same, other]
    assert [hosts[n]["instances"][0]["openvino"].get("NUM_STREAMS") for n in ("n1", "n2", "n3")] == [2, 2, None]
    table = subprocess.run([sys.executable, "-m", "hosttune", "fleet", "plan", "-i", inv, "--captures", str(caps)],
                           capture_output=True, text=True, cwd=REPO, timeout=120).stdout
    lines = {line.split()[0]: line for line in table.splitlines() if line.startswith("n")}
    assert f"{same} (tuned)" in lines["n2"] and other in lines["n3"] and "(tuned)" not in lines["n3"]
    # a bad overlay file: the hosts are invalid, naming the file and the field (exit 2)
    bad = write(tmp_path, overlay(same, hint="fast"), "bad.yaml")
    inv = write_inventory(tmp_path / "inv2", {"n1": {"ansible_host": "192.0.2.1", "hosttune_tune_overlay": bad}})
    proc = subprocess.run([sys.executable, "-m", "hosttune", "fleet", "plan", "-i", inv, "--captures", str(caps),
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert f"{bad}: classes.{same}.instances.hint" in json.loads(proc.stdout)["hosts"][0]["reason"]


def test_the_agent_plans_with_its_configurations_overlay(tmp_path, make_tree):
    """The agent's configuration (what the roles write: policy.tune_overlay) gives the agent the plan
    `hosttune plan --policy` gives the roles."""
    from hosttune.agent import config, worker

    root = make_tree(sockets=2, cores_per_node=4)
    cid = hwclass.class_id(topo_of(root))
    path = write(tmp_path, {"policy": {"profile": "throughput", "tune_overlay": overlay(cid, streams=3, nireq=5)},
                            "agent": {}}, "hosttune.yaml")
    cfg = config.load(HostFS.open(root), path)
    agent_plan = json.loads(worker.trial_plan(root, cfg.policy, keep=True)["plan_json"])
    cli_plan = json.loads(run_cli("plan", "--root", root, "--policy", path, "--json", check=0).stdout)
    assert agent_plan["instances"] == cli_plan["instances"] and agent_plan["tuned"] == cli_plan["tuned"]
    assert [(i["streams"], i["ovms"]["nireq"]) for i in agent_plan["instances"]] == [(3, 5), (3, 5)]
    # a bad overlay in the configuration: the agent refuses it naming the file and the field
    bad = write(tmp_path, {"policy": {"tune_overlay": overlay(cid, nireq=0)}}, "bad.yaml")
    with pytest.raises(PolicyError) as info:
        config.load(HostFS.open(root), bad)
    assert info.value.where == f"{bad}: policy.tune_overlay.classes.{cid}.instances.nireq"
