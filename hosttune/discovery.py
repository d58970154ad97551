"""Discovery: read a host tree (live or captured) through HostFS and build a Topology.

Only files are read, every path relative to the HostFS root, each at most once. Anything absent
is reported as unsupported with a reason; odd machines (sparse ids, offline CPU 0, memoryless or
CPU-less nodes, no cpufreq, non-x86) must not crash it.
"""

from __future__ import annotations

import re
from typing import Any

from hosttune import areas, cpulist, numbers
from hosttune.areas.base import CPU
from hosttune.errors import HosttuneError, TopologyError
from hosttune.sysfs import HostFS
from hosttune.topology import Cpu, Irq, Node, Topology, unsupported

NODE = "/sys/devices/system/node"
INFERENCE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                   "amx_bf16", "fma", "f16c", "asimd", "sve")


def _list_text(text: str) -> str:
    """A cpulist file's content with the kernels' ways of saying "empty": a NUL byte and a newline
    (some 3.10 kernels), "(null)" (others), or an empty line."""
    text = text.replace("\x00", "").strip()
    return "" if text == "(null)" else text


def _cpus(fs: HostFS, path: str, mask: str | None = None) -> list[int] | None:
    """A cpulist file; where it is missing, its older mask twin (`mask`), as on pre-list kernels."""
    text = fs.read(path)
    if text is not None:
        return cpulist.parse(_list_text(text), where=path)
    if mask is None:
        return None
    text = fs.read(mask)
    if text is None:
        return None
    text = _list_text(text)
    return cpulist.parse_mask(text) if text else []


def _int(fs: HostFS, path: str) -> int | None:
    return numbers.first_int(fs.read(path))


def discover(fs: HostFS) -> Topology:
    """Build the Topology of the host under fs.root."""
    if fs.listdir(CPU) is None:
        raise TopologyError(f"not a Linux host tree: {CPU} is missing", where=fs.root)
    try:
        cpus = _discover_cpus(fs)
        nodes, numa = _discover_nodes(fs, cpus)
        features = _discover_features(fs, cpus)
        features["numa"] = numa
        allowed_cpus, allowed_mems = _allowed(fs)
        features["cgroup"] = _cgroup(fs)
        if features["cgroup"].get("cpuset_cpus_effective") is not None and allowed_cpus is not None:
            allowed_cpus = sorted(set(allowed_cpus) & set(features["cgroup"]["cpuset_cpus_effective"]))
        return Topology(
            hostname=fs.read("/proc/sys/kernel/hostname") or fs.read("/etc/hostname") or "unknown",
            cpus=cpus,
            nodes=nodes,
            irqs=_discover_irqs(fs),
            kernel_cmdline=fs.read("/proc/cmdline") or "",
            isolated=_cpus(fs, f"{CPU}/isolated") or [],
            nohz_full=_cpus(fs, f"{CPU}/nohz_full") or [],
            allowed_cpus=allowed_cpus,
            allowed_mems=allowed_mems,
            features=features,
        )
    except HosttuneError as exc:
        exc.where = exc.where or fs.root
        raise


def _discover_cpus(fs: HostFS) -> list[Cpu]:
    present = _cpus(fs, f"{CPU}/present")
    if present is None:  # very old or odd kernels: fall back on the cpuN directories
        present = sorted(int(e[3:]) for e in fs.listdir(CPU) or [] if re.fullmatch(r"cpu[0-9]{1,9}", e))
    online_list = _cpus(fs, f"{CPU}/online")
    if online_list is None:  # no global list: each CPU's own online file (absent for a boot CPU: online)
        online_list = [c for c in present if (fs.read(f"{CPU}/cpu{c}/online") or "1").strip() != "0"]
    online = set(online_list)
    node_of = _cpu_nodes(fs)
    cpus = []
    for cpu_id in present:
        base = f"{CPU}/cpu{cpu_id}/topology"
        is_online = cpu_id in online
        socket = core = die = None
        siblings: list[int] = [cpu_id]
        if is_online:  # offline CPUs report -1 or nothing; their placement is unknown
            socket = _nonneg(_int(fs, f"{base}/physical_package_id"))
            die = _nonneg(_int(fs, f"{base}/die_id"))
            core = _nonneg(_int(fs, f"{base}/core_id"))
            # core_cpus_list replaces the deprecated thread_siblings_list; older kernels have the mask only
            sib = _cpus(fs, f"{base}/core_cpus_list")
            if sib is None:
                sib = _cpus(fs, f"{base}/thread_siblings_list", mask=f"{base}/thread_siblings")
            if sib:
                siblings = sorted(set(sib) & online | {cpu_id})
        cpus.append(Cpu(cpu_id, is_online, socket, die, core, node_of.get(cpu_id), siblings))
    return cpus


def _nonneg(value: int | None) -> int | None:
    return value if value is not None and value >= 0 else None


def _node_ids(fs: HostFS) -> list[int]:
    entries = fs.listdir(NODE)
    if entries is None:
        return []
    return sorted(int(e[4:]) for e in entries if re.fullmatch(r"node[0-9]{1,9}", e))


def _node_cpus(fs: HostFS, node_id: int) -> list[int]:
    base = f"{NODE}/node{node_id}"
    return _cpus(fs, f"{base}/cpulist", mask=f"{base}/cpumap") or []


def _cpu_nodes(fs: HostFS) -> dict[int, int]:
    node_of = {}
    for node_id in _node_ids(fs):
        for cpu_id in _node_cpus(fs, node_id):
            node_of.setdefault(cpu_id, node_id)
    return node_of


def numa_problems(cpus: list[Cpu], nodes: list[Node]) -> tuple[list[str], list[str]]:
    """(problems, oddities) of the firmware's NUMA tables. Problems make them unusable (broken ACPI
    SRAT): a CPU in two nodes, an online CPU in no node. An oddity is worth a warning only: a node
    spanning sockets (node interleaving, some VMs) still gives disjoint per-node cpusets."""
    problems, oddities = [], []
    seen: dict[int, int] = {}
    for node in nodes:
        for cpu_id in node.cpus:
            if cpu_id in seen:
                problems.append(f"CPU {cpu_id} is in node {seen[cpu_id]} and node {node.id}")
            seen.setdefault(cpu_id, node.id)
    lost = [c.id for c in cpus if c.online and c.id not in seen]
    if lost and nodes:
        problems.append(f"online CPUs {cpulist.format(lost)} are in no node")
    by_id = {c.id: c for c in cpus}
    for node in nodes:
        sockets = sorted({by_id[c].socket for c in node.cpus if c in by_id and by_id[c].socket is not None})
        if len(sockets) > 1:
            oddities.append(f"node {node.id} spans sockets {', '.join(map(str, sockets))}")
    return problems, oddities


def _discover_nodes(fs: HostFS, cpus: list[Cpu]) -> tuple[list[Node], dict[str, Any]]:
    """The NUMA nodes, and how far their tables can be trusted (features["numa"])."""
    ids = _node_ids(fs)
    if not ids:  # kernel without NUMA: one node holding everything
        total = _meminfo_bytes(fs.read("/proc/meminfo"), "MemTotal")
        for cpu in cpus:
            cpu.node = 0
        return [Node(0, [c.id for c in cpus], total, {0: 10})], {"status": "ok", "reason": "no NUMA in this kernel"}
    nodes = []
    for node_id in ids:
        base = f"{NODE}/node{node_id}"
        node_cpus = _node_cpus(fs, node_id)
        memory = _meminfo_bytes(fs.read(f"{base}/meminfo"), "MemTotal")
        distances: dict[int, int] = {}
        dist_text = fs.read(f"{base}/distance")
        if dist_text:
            for other, value in zip(ids, dist_text.split()):
                distances[other] = numbers.uint_or_none(value) or 0
        nodes.append(Node(node_id, node_cpus, memory, distances))
    problems, oddities = numa_problems(cpus, nodes)
    if problems:
        # like hwloc, ignore NUMA tables that cannot be true: one node holding every CPU and all the
        # memory, so per-node placement never overlaps (topology and plan say why)
        total = _meminfo_bytes(fs.read("/proc/meminfo"), "MemTotal") or sum(n.memory_bytes for n in nodes)
        for cpu in cpus:
            cpu.node = 0
        return [Node(0, [c.id for c in cpus], total, {0: 10})], {
            "status": "ignored", "reason": "the firmware's NUMA tables are inconsistent: " + "; ".join(problems[:8]),
            "firmware_nodes": [n.id for n in nodes], "problems": problems + oddities}
    return nodes, {"status": "ok", "warnings": oddities}


def _meminfo_bytes(text: str | None, key: str) -> int:
    """MemTotal from /proc/meminfo ("MemTotal: 123 kB") or a node meminfo ("Node 0 MemTotal: ...")."""
    if not text:
        return 0
    match = re.search(rf"{key}:\s+([0-9]{{1,20}})\s*kB", text)
    return int(match.group(1)) * 1024 if match else 0


def _discover_irqs(fs: HostFS) -> list[Irq]:
    names = _interrupt_names(fs.read("/proc/interrupts"))
    irq_numbers = sorted(n for n in map(numbers.uint_or_none, fs.listdir("/proc/irq") or []) if n is not None)
    irqs = []
    for number in irq_numbers:
        base = f"/proc/irq/{number}"
        affinity_text = fs.read(f"{base}/smp_affinity_list")
        try:
            affinity = cpulist.parse(affinity_text) if affinity_text is not None else None
        except HosttuneError:
            affinity = None
        node = _int(fs, f"{base}/node")
        irqs.append(Irq(number, names.get(number, ""), affinity, node if node is not None and node >= 0 else None))
    return irqs


def _interrupt_names(text: str | None) -> dict[int, str]:
    """IRQ number -> actions (device names), from /proc/interrupts."""
    if not text:
        return {}
    lines = text.splitlines()
    ncpus = len(lines[0].split()) if lines else 0
    names = {}
    for line in lines[1:]:
        label, _, rest = line.partition(":")
        label = label.strip()
        number = numbers.uint_or_none(label)
        if number is None:
            continue
        fields = rest.split()
        # counts (one per CPU), then chip name, hwirq/type, then the actions
        tail = fields[ncpus:]
        names[number] = " ".join(tail[2:]) if len(tail) > 2 else " ".join(tail)
    return names


def _allowed(fs: HostFS) -> tuple[list[int] | None, list[int] | None]:
    status = fs.read("/proc/self/status") or ""
    cpus = mems = None
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "Cpus_allowed_list":
            cpus = cpulist.parse(value, where="/proc/self/status")
        elif key == "Mems_allowed_list":
            mems = cpulist.parse(value, where="/proc/self/status")
    return cpus, mems


def _cgroup(fs: HostFS) -> dict[str, Any]:
    controllers = fs.read("/sys/fs/cgroup/cgroup.controllers")
    if controllers is None:
        return {"version": 1 if fs.listdir("/sys/fs/cgroup/cpuset") is not None else None,
                **unsupported("no cgroup v2 unified hierarchy at /sys/fs/cgroup")}
    info: dict[str, Any] = {"status": "ok", "version": 2, "controllers": controllers.split()}
    path = "/"
    for line in (fs.read("/proc/self/cgroup") or "").splitlines():
        if line.startswith("0::"):
            path = line[3:] or "/"
    info["path"] = path
    group = "/sys/fs/cgroup" + ("" if path == "/" else path)
    for name in ("cpuset.cpus.effective", "cpuset.mems.effective"):
        text = fs.read(f"{group}/{name}")
        info[name.replace(".", "_")] = cpulist.parse(text) if text else None
    return info


def _discover_features(fs: HostFS, cpus: list[Cpu]) -> dict[str, Any]:
    features: dict[str, Any] = {
        "cpu": _cpuinfo(fs.read("/proc/cpuinfo")),
        "os": _os_release(fs.read("/etc/os-release")),
        "smt": fs.read(f"{CPU}/smt/control"),
    }
    return areas.discover(fs, features, cpus)  # each tuning area's facts


def _cpuinfo(text: str | None) -> dict[str, Any]:
    """Model, vendor and inference-relevant ISA flags from the first processor block."""
    if not text:
        return {"model": None, "vendor": None, "flags": [], **unsupported("/proc/cpuinfo is missing")}
    block: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        block.setdefault(key.strip(), value.strip())
    flags = set((block.get("flags") or block.get("Features") or "").split())
    arch = "x86_64" if "flags" in block else ("aarch64" if "Features" in block else "unknown")
    return {
        "status": "ok",
        "arch": arch,
        "vendor": block.get("vendor_id") or block.get("CPU implementer"),
        "model": block.get("model name") or block.get("Model") or block.get("cpu model"),
        "flags": sorted(f for f in INFERENCE_FLAGS if f in flags),
    }


def _os_release(text: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE", "VERSION_ID", "PRETTY_NAME"):
            info[key.lower()] = value.strip().strip('"')
    family = " ".join([info.get("id", ""), info.get("id_like", "")])
    info["family"] = ("debian" if re.search(r"debian|ubuntu", family)
                      else "redhat" if re.search(r"rhel|fedora|centos|rocky|alma", family) else "unknown")
    return info
