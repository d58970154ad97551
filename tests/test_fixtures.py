"""Discovery and plan on trees captured from real kernels (QEMU guests booted with the testbed
topologies; regenerate with tests/fixtures/capture_guests.py)."""

import json

import pytest

from hosttune import discovery, plan, policy
from hosttune.sysfs import HostFS
from tests.conftest import extract_fixture, fixture_names, run_cli
from tests.test_engine import normalized, snapshot

EXPECTED = {
    # name: (sockets, nodes, online cpus, threads/core, offline, node cpulists)
    "default": (2, 2, 8, 1, [], [[0, 1, 2, 3], [4, 5, 6, 7]]),
    "smt4n": (2, 4, 16, 2, [], [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]),
    "memoryless": (3, 3, 6, 1, [], [[0, 1], [2, 3], [4, 5]]),
    "sparse": (4, 2, 8, 1, [], [[0, 1, 4, 5], [2, 3, 6, 7]]),
    # the kernel drops offline CPUs from the node's cpulist
    "offline": (2, 2, 6, 1, [4, 6], [[0, 1, 2, 3], [5, 7]]),
}


def test_every_fixture_is_present():
    assert sorted(EXPECTED) == fixture_names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_topology(name, tmp_path):
    sockets, nodes, online, threads, offline, node_cpus = EXPECTED[name]
    topo = discovery.discover(HostFS.open(f"tests/fixtures/{name}.tar.gz"))
    s = topo.to_dict()["summary"]
    assert (s["sockets"], s["nodes"], s["cpus_online"], s["threads_per_core"], s["cpus_offline"]) == (
        sockets, nodes, online, threads, offline)
    assert [n.cpus for n in topo.nodes] == node_cpus
    # a guest has no cpufreq driver: reported, not crashed on
    assert topo.features["cpufreq"]["status"] == "unsupported"
    assert topo.irqs and all(i.affinity is None or i.affinity for i in topo.irqs)
    # the tarball and its extraction are the same root
    assert discovery.discover(HostFS.open(extract_fixture(name, tmp_path))).to_dict() == topo.to_dict()


def test_smt_siblings_are_real():
    topo = discovery.discover(HostFS.open("tests/fixtures/smt4n.tar.gz"))
    assert topo.cpu(0).siblings == [0, 1]
    p = plan.make_plan(topo, policy.validate({}))
    assert p["nodes"][0]["housekeeping"] == [0, 1]  # one whole core, both threads


def test_memoryless_node_borrows_nearest_memory():
    topo = discovery.discover(HostFS.open("tests/fixtures/memoryless.tar.gz"))
    assert {n.id: n.memory_bytes == 0 for n in topo.nodes} == {0: False, 1: False, 2: True}
    p = plan.make_plan(topo, policy.validate({}))
    assert {i["node"]: i["mems"] for i in p["instances"]} == {0: [0], 1: [1], 2: [0]}


def test_offline_cpus_are_left_alone():
    p = json.loads(run_cli("plan", "--root", "tests/fixtures/offline.tar.gz", "--json", check=0).stdout)
    assert p["offline"] == [4, 6]
    assert not {4, 6} & set(p["housekeeping"] + p["isolated"])
    assert p["nodes"][1]["housekeeping"] == [5] and p["nodes"][1]["isolated"] == [7]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_apply_verify_restore_on_fixture(name, tmp_path):
    root = extract_fixture(name, tmp_path)
    (tmp_path / "etc" / "default").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc" / "default" / "grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    before = snapshot(root)
    run_cli("apply", "--root", root, check=3)
    verify = json.loads(run_cli("verify", "--root", root, "--json").stdout)
    assert verify["counts"]["drift"] == 0 and verify["status"] == "pending-reboot"
    assert normalized(snapshot(root)) != normalized(before)
    run_cli("restore", "--root", root, check=3)  # the GRUB drop-in is gone: reboot required
    assert json.loads(run_cli("verify", "--root", root, "--json").stdout)["counts"]["drift"] > 0
    after = normalized(snapshot(root))  # every file of the capture, value by value, as before apply
    expected = normalized(before)
    assert [k for k in expected if after.get(k) != expected[k]] == [] and set(after) == set(expected)
