import json
import os
import tarfile

import pytest

from hosttune import discovery
from hosttune.errors import TopologyError
from hosttune.sysfs import HostFS
from tests.conftest import run_cli


def discover(root):
    return discovery.discover(HostFS.open(root))


def test_two_socket_smt(make_tree):
    topo = discover(make_tree(sockets=2, cores_per_node=4, threads=2))
    d = topo.to_dict()
    assert d["schema"] == "hosttune.topology/1"
    assert d["summary"] == {"sockets": 2, "nodes": 2, "cores": 8, "cpus_online": 16, "cpus_offline": [],
                            "threads_per_core": 2}
    cpu0 = d["cpus"][0]
    assert cpu0 == {"id": 0, "online": True, "socket": 0, "die": 0, "core": 0, "node": 0, "siblings": [0, 8]}
    assert [n["cpus"] for n in d["nodes"]] == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]
    assert d["nodes"][0]["memory_bytes"] == 4 * 1024**3
    assert d["nodes"][0]["distances"] == {"0": 10, "1": 32}
    assert d["cpu"]["flags"] == ["amx_tile", "avx2", "avx512_vnni", "avx512f"]
    assert d["cpufreq"]["driver"] == "intel_pstate" and d["cpufreq"]["policies"][0]["base_khz"] == 2100000
    assert d["turbo"] == {"status": "ok", "switch": "intel_pstate", "path": "/sys/devices/system/cpu/intel_pstate/no_turbo",
                          "enabled": True, "pstate_status": "active"}
    assert d["epp"]["values"] == ["balance_performance"]
    assert [s["name"] for s in d["cstates"]["states"]] == ["POLL", "C1", "C1E", "C6"]
    assert d["thp"] == {"status": "ok", "enabled": "madvise", "defrag": "madvise"}
    assert d["irqbalance"] == {"installed": True, "running": False, "config": "/etc/default/irqbalance"}
    assert d["cgroup"]["cpuset_cpus_effective"] == list(range(16))
    assert len(d["irqs"]) == 16 and d["irqs"][0]["name"] == "dev0"


def test_offline_cpu0_sparse_ids_and_sparse_nodes(make_tree):
    topo = discover(make_tree(sockets=2, nodes_per_socket=2, cores_per_node=2, cpu_stride=2,
                              node_ids=[0, 1, 33, 34], offline=[0, 6]))
    assert topo.offline_cpus == [0, 6]
    assert [n.id for n in topo.nodes] == [0, 1, 33, 34]
    assert topo.online_cpus == [2, 4, 8, 10, 12, 14]
    off = topo.cpu(0)
    assert (off.online, off.socket, off.core, off.node) == (False, None, None, 0)
    assert topo.cpu(12).node == 34


def test_memoryless_and_cpuless_nodes(make_tree):
    topo = discover(make_tree(sockets=2, cores_per_node=2, memoryless=[1], cpuless_nodes=1))
    nodes = {n.id: n for n in topo.nodes}
    assert nodes[1].memory_bytes == 0 and nodes[1].cpus == [2, 3]
    assert nodes[2].cpus == [] and nodes[2].memory_bytes > 0


@pytest.mark.parametrize("driver,switch,base", [("acpi-cpufreq", "cpufreq-boost", 2100000),
                                                ("amd-pstate", "amd_pstate", 2400000)])
def test_other_cpufreq_drivers(make_tree, driver, switch, base):
    d = discover(make_tree(cpufreq=driver)).to_dict()
    assert d["turbo"]["switch"] == switch
    assert d["cpufreq"]["policies"][0]["base_khz"] == base
    assert d["epp"]["status"] == "unsupported"


def test_vm_without_cpufreq_or_numa(make_tree, tmp_path):
    root = make_tree(sockets=1, cpufreq=None)
    import shutil
    shutil.rmtree(os.path.join(root, "sys/devices/system/node"))
    os.remove(os.path.join(root, "sys/devices/system/cpu/cpuidle/current_driver"))
    d = discover(root).to_dict()
    assert d["cpufreq"]["status"] == "unsupported" and "no cpufreq" in d["cpufreq"]["reason"]
    assert d["turbo"]["status"] == "unsupported"
    assert d["cstates"]["status"] == "unsupported"
    assert len(d["nodes"]) == 1 and d["nodes"][0]["cpus"] == [0, 1, 2, 3]
    assert all(c["node"] == 0 for c in d["cpus"])


def test_non_x86_cpuinfo(tree):
    with open(os.path.join(tree, "proc/cpuinfo"), "w") as f:
        f.write("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm sve\nCPU implementer\t: 0x41\n")
    cpu = discover(tree).to_dict()["cpu"]
    assert cpu["arch"] == "aarch64" and cpu["flags"] == ["asimd", "sve"]


def test_unreadable_root_is_a_clear_error(tmp_path):
    with pytest.raises(TopologyError) as info:
        discover(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TopologyError, match="not a Linux host tree"):
        discover(str(tmp_path / "empty"))


def test_capture_round_trip_reads_each_file_once(make_tree, tmp_path):
    root = make_tree(sockets=2, nodes_per_socket=2, cores_per_node=2, threads=2, irqs=50)
    fs = HostFS.open(root)
    reads = []
    original = fs._read_uncached
    fs._read_uncached = lambda key: (reads.append(key), original(key))[1]
    before = discovery.discover(fs).to_dict()
    assert len(reads) == len(set(reads)), "a file was read twice"
    out = tmp_path / "cap.tar.gz"
    run_cli("capture", "--root", root, "-o", str(out), check=0)
    with tarfile.open(out) as archive:
        names = {m.name for m in archive.getmembers() if m.isfile()}
    # exactly the files discovery read (plus existence markers), nothing else from the tree
    assert set(reads) - names <= {k for k in reads if original(k) is None}
    assert names <= set(reads) | {k for k, seen in fs._exists.items() if seen}
    with tarfile.open(out) as archive:  # the boot loader is only probed for: an empty marker, not its content
        assert archive.getmember("etc/default/grub").size <= 1
    # the tarball itself as root, and its extraction, give the same topology
    assert discovery.discover(HostFS.open(str(out))).to_dict() == before
    dest = tmp_path / "x"
    dest.mkdir()
    with tarfile.open(out) as archive:
        archive.extractall(dest, filter="data")
    assert discover(str(dest)).to_dict() == before


def test_topology_cli_json_and_text(tree):
    proc = run_cli("topology", "--root", tree, "--json", check=0)
    data = json.loads(proc.stdout)
    assert data["summary"]["nodes"] == 2
    text = run_cli("topology", "--root", tree, check=0).stdout
    assert "2 socket(s), 2 NUMA node(s)" in text and "node 1: cpus 4-7" in text


def test_live_host_topology():
    """The machine the tests run on: whatever it lacks must come out as unsupported, not a crash."""
    data = json.loads(run_cli("topology", "--json", check=0).stdout)
    assert data["summary"]["cpus_online"] == os.cpu_count()
    for area in ("cpufreq", "turbo", "epp", "cstates"):
        assert data[area]["status"] in ("ok", "unsupported")
        if data[area]["status"] == "unsupported":
            assert data[area]["reason"]
