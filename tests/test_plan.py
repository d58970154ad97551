import json
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hosttune import cpulist, discovery, plan, policy
from hosttune.errors import PolicyError
from hosttune.sysfs import HostFS
from tests.conftest import run_cli
from tests.treegen import Spec, write_tree


def make(root, pol=None):
    return plan.make_plan(discovery.discover(HostFS.open(root)), policy.validate(pol or {}))


def test_default_plan_two_sockets(make_tree):
    p = make(make_tree(sockets=2, cores_per_node=4))
    assert p["schema"] == "hosttune.plan/1"
    assert [(n["housekeeping"], n["isolated"]) for n in p["nodes"]] == [([0], [1, 2, 3]), ([4], [5, 6, 7])]
    assert p["kernel_args"] == ["isolcpus=managed_irq,domain,1-3,5-7", "nohz_full=1-3,5-7", "rcu_nocbs=1-3,5-7",
                                "irqaffinity=0,4"]
    inst = p["instances"]
    assert [(i["name"], i["cpus_list"], i["mems_list"], i["port"]) for i in inst] == [
        ("node0", "1-3", "0", 9000), ("node1", "5-7", "1", 9001)]
    assert inst[0]["openvino"] == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 3,
                                   "ENABLE_CPU_PINNING": True, "ENABLE_HYPER_THREADING": False}
    assert inst[0]["ovms"]["plugin_config"]["ENABLE_CPU_PINNING"] == "YES"
    s = p["settings"]
    assert s["cpufreq"]["policies"][0] == {"id": 0, "cpus": [0], "governor": "performance",
                                          "min_khz": 2100000, "max_khz": 2100000}
    assert s["turbo"]["value"] == "1"  # intel_pstate no_turbo=1 is "off"
    assert s["cstates"]["disable"] == ["state3"]  # C6 (170 us) > 10 us; C1E at 10 us stays
    assert s["irqbalance"]["banned_cpulist"] == "1-3,5-7"
    # IRQs of a node go to that node's housekeeping CPU; unknown-node IRQs to all housekeeping CPUs
    pins = {pin["irq"]: pin for pin in s["irqs"]["pin"]}
    assert pins[24]["node"] is None and pins[24]["cpus"] == [0, 4]
    assert pins[25]["node"] == 1 and pins[25]["cpus"] == [4]
    assert pins[26]["node"] == 0 and pins[26]["cpus"] == [0]


@pytest.mark.parametrize("profile", ["latency", "throughput"])
def test_inference_precision_reaches_openvino_and_ovms(make_tree, profile):
    tree = make_tree(sockets=2, cores_per_node=4)
    unset = make(tree, {"profile": profile})["instances"][0]
    assert "INFERENCE_PRECISION_HINT" not in unset["openvino"]  # OpenVINO's own default
    inst = make(tree, {"profile": profile, "instances": {"inference_precision": "f32"}})["instances"][0]
    assert inst["openvino"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert inst["ovms"]["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_instances_carry_the_idle_poll(make_tree):
    tree = make_tree(sockets=2, cores_per_node=4)
    latency = make(tree, {})
    assert [i["idle_poll_us"] for i in latency["instances"]] == [1000, 1000]
    assert "idle poll 1000 us" in plan.render(latency)
    throughput = make(tree, {"profile": "throughput"})
    assert [i["idle_poll_us"] for i in throughput["instances"]] == [0, 0]
    assert "idle poll" not in plan.render(throughput)


def test_irqs_follow_their_numa_node_not_their_socket(make_tree):
    """2 sockets x 2 nodes: node 1 is on socket 0. A device on node 1 gets node 1's housekeeping
    CPU, not socket 1's (or node 0's, which shares its socket)."""
    p = plan.make_plan(discovery.discover(HostFS.open(make_tree(sockets=2, nodes_per_socket=2, cores_per_node=2,
                                                                  irqs=8))), policy.validate({}))
    hk = {row["id"]: row["housekeeping"] for row in p["nodes"]}
    assert hk == {0: [0], 1: [2], 2: [4], 3: [6]}
    by_node = {}
    for pin in p["settings"]["irqs"]["pin"]:
        by_node.setdefault(pin["node"], set()).add(tuple(pin["cpus"]))
    assert by_node == {0: {(0,)}, 1: {(2,)}, 2: {(4,)}, 3: {(6,)}, None: {(0, 2, 4, 6)}}


def test_smt_siblings_stay_together_and_threads_use_cores(make_tree):
    p = make(make_tree(sockets=1, cores_per_node=4, threads=2), {"profile": "throughput"})
    assert p["nodes"][0]["housekeeping"] == [0, 4]
    inst = p["instances"][0]
    assert inst["cores"] == 3 and inst["cpus_list"] == "1-3,5-7"
    assert "PERFORMANCE_HINT" not in inst["openvino"]
    assert inst["openvino"]["NUM_STREAMS"] <= inst["cores"]
    assert inst["ovms"]["nireq"] >= inst["streams"]


def test_memoryless_node_instance_uses_nearest_memory(make_tree):
    p = make(make_tree(sockets=2, nodes_per_socket=2, cores_per_node=2, memoryless=[1]))
    by_node = {i["node"]: i for i in p["instances"]}
    assert by_node[1]["mems"] == [0]  # same socket, distance 16


def test_offline_cpu0(make_tree):
    p = make(make_tree(sockets=2, cores_per_node=3, offline=[0]))
    assert p["offline"] == [0]
    assert p["nodes"][0]["housekeeping"] == [1] and p["nodes"][0]["isolated"] == [2]
    assert 0 not in p["isolated"] + p["housekeeping"]


def test_explicit_sets(make_tree):
    root = make_tree(sockets=2, cores_per_node=4)
    p = make(root, {"housekeeping": {"cpus": "0,7"}})
    assert p["housekeeping"] == [0, 7] and p["isolated"] == [1, 2, 3, 4, 5, 6]
    p = make(root, {"isolation": {"cpus": "2-3,6-7"}})
    assert p["housekeeping"] == [0, 1, 4, 5]


@pytest.mark.parametrize("pol,field,words", [
    ({"housekeeping": {"cores_per_node": 4}}, "housekeeping.cores_per_node", "4 >= the 4 core(s) of node 0"),
    ({"housekeeping": {"cpus": "0-3"}}, "housekeeping.cpus", "node 1 would keep no housekeeping CPU"),
    ({"housekeeping": {"cpus": "0,4,99"}}, "housekeeping.cpus", "CPUs 99 are not online"),
    ({"isolation": {"cpus": "0-7"}}, "isolation.cpus", "would keep no housekeeping CPU"),
    ({"instances": {"nodes": [0, 7]}}, "instances.nodes", "node 7 does not exist"),
    ({"cpufreq": {"lock": 9000}}, "cpufreq.lock", "outside"),
    ({"cpufreq": {"governor": "ondemand"}}, "cpufreq.governor", "not offered"),
    ({"cpufreq": {"epp": "turbo"}}, "cpufreq.epp", "not offered"),
    ({"instances": {"base_port": 65535}}, "instances.base_port", "ports up to 65636 (above 65535)"),
    ({"instances": {"base_port": 9000, "grpc_base_port": 9001}}, "instances.grpc_base_port",
     "REST ports 9000-9001 overlap their gRPC ports 9001-9002"),
])
def test_policy_that_does_not_fit_the_host(make_tree, pol, field, words):
    with pytest.raises(PolicyError) as info:
        make(make_tree(sockets=2, cores_per_node=4), pol)
    assert info.value.where == field and words in info.value.message


def test_instance_ports_and_models(make_tree):
    tree = make_tree(sockets=2, cores_per_node=4)
    default = make(tree)["instances"]
    assert [(i["port"], i["grpc_port"], i["model"], i["models"]) for i in default] == [
        (9000, 9100, "sample", [{"name": "sample", "version": None}]),
        (9001, 9101, "sample", [{"name": "sample", "version": None}])]
    two = make(tree, {"instances": {"base_port": 7000, "grpc_base_port": 6998, "model": ["b:3", "a"]}})["instances"]
    assert [(i["port"], i["grpc_port"]) for i in two] == [(7000, 6998), (7001, 6999)]
    assert two[1]["model"] == "b" and two[1]["models"] == [{"name": "b", "version": 3}, {"name": "a", "version": None}]
    # the container's OVMS config.json: both models, the instance's nireq and OpenVINO properties
    entries = [e["config"] for e in two[1]["ovms"]["config"]["model_config_list"]]
    assert entries == [
        {"name": "b", "base_path": "/models/b", "nireq": two[1]["ovms"]["nireq"], "target_device": "CPU",
         "plugin_config": two[1]["ovms"]["plugin_config"], "model_version_policy": {"specific": {"versions": [3]}}},
        {"name": "a", "base_path": "/models/a", "nireq": two[1]["ovms"]["nireq"], "target_device": "CPU",
         "plugin_config": two[1]["ovms"]["plugin_config"]}]
    assert two[1]["ovms"]["config"]["monitoring"]["metrics"]["enable"] is True


def test_smt_split_by_user_is_refused(make_tree):
    with pytest.raises(PolicyError, match="SMT siblings"):
        make(make_tree(sockets=1, cores_per_node=4, threads=2), {"housekeeping": {"cpus": "0"}})


def test_required_area_unsupported(make_tree):
    root = make_tree(cpufreq=None)
    with pytest.raises(PolicyError, match="cpufreq is required but unsupported"):
        make(root, {"required": ["cpufreq"]})
    assert make(root)["settings"]["cpufreq"]["status"] == "unsupported"


def test_plan_cli_bad_input_exit_2(make_tree, tmp_path):
    root = make_tree(sockets=2, cores_per_node=2)
    pol = tmp_path / "p.yaml"
    pol.write_text("housekeeping:\n  cores_per_node: 2\n")
    proc = run_cli("plan", "--root", root, "--policy", str(pol))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "housekeeping.cores_per_node: 2 >= the 2 core(s) of node 0" in proc.stderr
    proc = run_cli("plan", "--root", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr and "Traceback" not in proc.stderr


def test_human_view_lists_nodes(make_tree):
    text = run_cli("plan", "--root", make_tree(sockets=2, cores_per_node=4), check=0).stdout
    assert "   0  0                1-3                  node0       9000  0" in text
    assert "kernel arguments: isolcpus=managed_irq,domain,1-3,5-7" in text


def test_plan_of_capture_equals_plan_of_live_host(tmp_path):
    live = json.loads(run_cli("plan", "--json", check=0).stdout)
    cap = tmp_path / "c.tar.gz"
    run_cli("capture", "-o", str(cap), check=0)
    captured = json.loads(run_cli("plan", "--root", str(cap), "--json", check=0).stdout)
    assert captured == live


# -- properties over generated topologies ------------------------------------------------------
specs = st.builds(
    Spec,
    sockets=st.integers(1, 3),
    nodes_per_socket=st.integers(1, 2),
    cores_per_node=st.integers(2, 5),
    threads=st.sampled_from([1, 2]),
    irqs=st.integers(0, 12),
    cpu_stride=st.sampled_from([1, 2]),
    smt_interleaved=st.booleans(),
    cpufreq=st.sampled_from(["intel_pstate", "acpi-cpufreq", None]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs, hk=st.integers(1, 3), profile=st.sampled_from(["latency", "throughput"]),
       offline_pick=st.lists(st.integers(0, 200), max_size=3), memoryless=st.lists(st.integers(0, 5), max_size=2),
       sparse_nodes=st.booleans())
def test_plan_invariants(spec, hk, profile, offline_pick, memoryless, sparse_nodes):
    assume(hk < spec.cores_per_node)
    if sparse_nodes:  # node numbers that are neither 0..n-1 nor the socket numbers
        spec.node_ids = [3 * i + 1 for i in range(spec.nodes)]
    spec.memoryless = [m for m in memoryless if m < spec.nodes - 1]  # keep one node with memory
    ncpus = spec.sockets * spec.nodes_per_socket * spec.cores_per_node * spec.threads
    spec.offline = sorted({(p % ncpus) * spec.cpu_stride for p in offline_pick})
    with tempfile.TemporaryDirectory() as root:
        write_tree(root, spec)
        topo = discovery.discover(HostFS.open(root))
        try:
            p = plan.make_plan(topo, policy.validate({"profile": profile, "housekeeping": {"cores_per_node": hk}}))
        except PolicyError as exc:
            # the only refusals allowed: offline CPUs left a node with too few cores, or none at all
            if not topo.online_cpus:
                assert exc.where == "topology" and "no online CPU" in exc.message, exc
            else:
                assert exc.where == "housekeeping.cores_per_node", exc
            return
    hk_set, iso_set = set(p["housekeeping"]), set(p["isolated"])
    assert not hk_set & iso_set
    assert hk_set | iso_set == set(topo.online_cpus)
    assert cpulist.parse(p["kernel_args"][0].split(",", 2)[2]) == p["isolated"]
    for row in p["nodes"]:
        online_here = [c for c in row["cpus"] if topo.cpu(c).online]
        if online_here:
            assert row["housekeeping"], f"node {row['id']} lost its housekeeping CPUs"
    for cpu_id in hk_set:  # SMT siblings kept together
        assert set(topo.cpu(cpu_id).siblings) <= hk_set
    seen: set[int] = set()
    node_cpus = {n.id: set(n.cpus) for n in topo.nodes}
    for inst in p["instances"]:
        cpus = set(inst["cpus"])
        assert not cpus & seen and cpus <= node_cpus[inst["node"]] and cpus <= iso_set
        seen |= cpus
        mem_node = next(n for n in topo.nodes if n.id == inst["mems"][0])
        assert mem_node.memory_bytes > 0
        ov = inst["openvino"]
        assert not ("NUM_STREAMS" in ov and "PERFORMANCE_HINT" in ov)
        assert inst["streams"] <= inst["cores"] and ov["INFERENCE_NUM_THREADS"] <= inst["cores"]
        assert inst["ovms"]["nireq"] >= inst["streams"]
    assert len({i["port"] for i in p["instances"]}) == len(p["instances"])
    # every device IRQ on the housekeeping CPUs of its own NUMA node (any when it has none or no node)
    hk_by_node: dict = {}
    for cpu_id in hk_set:
        hk_by_node.setdefault(topo.cpu(cpu_id).node, set()).add(cpu_id)
    node_of_irq = {i.irq: i.node for i in topo.irqs}
    for pin in p["settings"]["irqs"]["pin"]:
        assert set(pin["cpus"]) == (hk_by_node.get(node_of_irq[pin["irq"]]) or hk_set), pin


def test_memory_node_is_the_nearest_with_memory():
    """A memoryless node's instance binds memory on the nearest node that has memory (lowest
    distance, then lowest id); a node with memory, or one without distances, keeps its own."""
    from hosttune.topology import Node, Topology

    def topo(nodes):
        return Topology("h", [], nodes, [], "", [], [], None, None, {})

    nodes = [Node(0, [0], 4 << 30, {0: 10, 1: 20, 2: 12, 3: 12}), Node(1, [1], 0, {0: 20, 1: 10, 2: 31, 3: 21}),
             Node(2, [2], 4 << 30, {0: 12, 1: 31, 2: 10, 3: 30}), Node(3, [3], 4 << 30, {0: 12, 1: 21, 2: 30, 3: 10})]
    t = topo(nodes)
    assert plan._memory_node(t, 0) == 0  # has memory
    assert plan._memory_node(t, 1) == 0  # nearest with memory: 0 (20) before 3 (21) and 2 (31)
    nodes[0].memory_bytes = 0
    assert plan._memory_node(t, 1) == 3  # 0 has none now: 3 (21) before 2 (31)
    nodes[3].distances = {0: 12, 1: 31, 2: 30, 3: 10}
    nodes[1].distances = {0: 20, 1: 10, 2: 31, 3: 31}
    assert plan._memory_node(t, 1) == 2  # a tie at 31: the lower id
    assert plan._memory_node(topo([Node(0, [0], 0, {})]), 0) == 0  # no distances: itself
    assert plan._memory_node(topo([Node(0, [0], 0, {0: 10}), Node(1, [1], 0, {1: 10})]), 0) == 0  # nobody has memory


@pytest.mark.parametrize("given, field, split", [
    ({"housekeeping": {"cpus": "0,1"}}, "housekeeping.cpus", "0-1,4-5"),
    ({"housekeeping": {"cpus": "0,2,4"}}, "housekeeping.cpus", "2,6"),  # core 0 whole, core 2 split
    ({"isolation": {"cpus": "1-3,5,6"}}, "isolation.cpus", "3,7"),  # housekeeping 0,4,7: core 3 split
])
def test_split_siblings_are_named_exactly(make_tree, given, field, split):
    """SMT siblings are 0/4, 1/5, 2/6, 3/7: the message names every CPU of each split core, and only those."""
    with pytest.raises(PolicyError) as info:
        make(make_tree(sockets=1, cores_per_node=4, threads=2), given)
    assert info.value.where == field
    assert f"CPUs {split} are split from their core's siblings" in info.value.message, info.value.message


def test_whole_cores_named_by_the_user_are_accepted(make_tree):
    p = make(make_tree(sockets=1, cores_per_node=4, threads=2), {"housekeeping": {"cpus": "0,4"}})
    assert p["housekeeping"] == [0, 4] and p["isolated"] == [1, 2, 3, 5, 6, 7]


@pytest.mark.parametrize("profile, per_stream, cores, cpus, want", [
    # latency: one stream, all cores' threads, no SMT threads
    ("latency", None, 3, 6, ({"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 3, "ENABLE_CPU_PINNING": True,
                               "ENABLE_HYPER_THREADING": False}, 1)),
    # throughput, derived: 1 CPU per stream below 8 cores, 4 from 8 cores on
    ("throughput", None, 1, 1, ({"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": True,
                                  "ENABLE_HYPER_THREADING": False}, 1)),
    ("throughput", None, 7, 14, ({"NUM_STREAMS": 7, "INFERENCE_NUM_THREADS": 7, "ENABLE_CPU_PINNING": True,
                                   "ENABLE_HYPER_THREADING": True}, 7)),
    ("throughput", None, 8, 8, ({"NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 8, "ENABLE_CPU_PINNING": True,
                                  "ENABLE_HYPER_THREADING": False}, 2)),
    ("throughput", None, 10, 10, ({"NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 8, "ENABLE_CPU_PINNING": True,
                                    "ENABLE_HYPER_THREADING": False}, 2)),
    # explicit threads per stream: streams never exceed cores, threads never exceed cores
    ("throughput", 3, 10, 20, ({"NUM_STREAMS": 3, "INFERENCE_NUM_THREADS": 9, "ENABLE_CPU_PINNING": True,
                                 "ENABLE_HYPER_THREADING": True}, 3)),
    ("throughput", 100, 6, 6, ({"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 6, "ENABLE_CPU_PINNING": True,
                                 "ENABLE_HYPER_THREADING": False}, 1)),
])
def test_openvino_settings_are_pinned(profile, per_stream, cores, cpus, want):
    pol = policy.validate({"profile": profile, "instances": {"threads_per_stream": per_stream}})
    assert plan._openvino(pol, cores, cpus) == (*want, profile)


def test_a_host_with_no_online_cpu_is_refused_naming_the_topology(make_tree):
    with pytest.raises(PolicyError) as info:
        make(make_tree(sockets=1, cores_per_node=2, threads=1, offline=[0, 1]))
    assert info.value.where == "topology" and "no online CPU" in info.value.message
