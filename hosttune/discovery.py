"""Discovery: read a host tree (live or captured) through HostFS and build a Topology.

Only files are read, every path relative to the HostFS root, each at most once. Anything absent
is reported as unsupported with a reason; odd machines (sparse ids, offline CPU 0, memoryless or
CPU-less nodes, no cpufreq, non-x86) must not crash it.
"""

from __future__ import annotations

import re
from typing import Any

from hosttune import cpulist
from hosttune.errors import HosttuneError, TopologyError
from hosttune.sysfs import HostFS
from hosttune.topology import Cpu, Irq, Node, Topology, unsupported

CPU = "/sys/devices/system/cpu"
NODE = "/sys/devices/system/node"
INFERENCE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                   "amx_bf16", "fma", "f16c", "asimd", "sve")
# sysctls the plan may set; reported so that a plan and a verify can be read beside them
SYSCTLS = ("kernel.numa_balancing", "kernel.timer_migration", "vm.swappiness", "vm.stat_interval",
           "kernel.sched_rt_runtime_us", "kernel.nmi_watchdog", "kernel.watchdog_cpumask")


def _cpus(fs: HostFS, path: str) -> list[int] | None:
    text = fs.read(path)
    if text is None:
        return None
    return cpulist.parse(text, where=path)


def _int(fs: HostFS, path: str) -> int | None:
    text = fs.read(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def discover(fs: HostFS) -> Topology:
    """Build the Topology of the host under fs.root."""
    if fs.listdir(CPU) is None:
        raise TopologyError(f"not a Linux host tree: {CPU} is missing", where=fs.root)
    try:
        cpus = _discover_cpus(fs)
        nodes = _discover_nodes(fs, cpus)
        features = _discover_features(fs, cpus)
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
            nohz_full=_nohz_full(fs),
            allowed_cpus=allowed_cpus,
            allowed_mems=allowed_mems,
            features=features,
        )
    except HosttuneError as exc:
        exc.where = exc.where or fs.root
        raise


def _nohz_full(fs: HostFS) -> list[int]:
    text = fs.read(f"{CPU}/nohz_full")
    if text is None or text.strip() in ("", "(null)"):
        return []
    return cpulist.parse(text, where=f"{CPU}/nohz_full")


def _discover_cpus(fs: HostFS) -> list[Cpu]:
    present = _cpus(fs, f"{CPU}/present")
    if present is None:  # very old or odd kernels: fall back on the cpuN directories
        present = sorted(int(e[3:]) for e in fs.listdir(CPU) or [] if re.fullmatch(r"cpu\d+", e))
    online_list = _cpus(fs, f"{CPU}/online")
    online = set(online_list if online_list is not None else present)
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
            sib = _cpus(fs, f"{base}/thread_siblings_list")
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
    return sorted(int(e[4:]) for e in entries if re.fullmatch(r"node\d+", e))


def _cpu_nodes(fs: HostFS) -> dict[int, int]:
    node_of = {}
    for node_id in _node_ids(fs):
        for cpu_id in _cpus(fs, f"{NODE}/node{node_id}/cpulist") or []:
            node_of[cpu_id] = node_id
    return node_of


def _discover_nodes(fs: HostFS, cpus: list[Cpu]) -> list[Node]:
    ids = _node_ids(fs)
    if not ids:  # kernel without NUMA: one node holding everything
        total = _meminfo_bytes(fs.read("/proc/meminfo"), "MemTotal")
        for cpu in cpus:
            cpu.node = 0
        return [Node(0, [c.id for c in cpus], total, {0: 10})]
    nodes = []
    for node_id in ids:
        base = f"{NODE}/node{node_id}"
        node_cpus = _cpus(fs, f"{base}/cpulist") or []
        memory = _meminfo_bytes(fs.read(f"{base}/meminfo"), "MemTotal")
        distances: dict[int, int] = {}
        dist_text = fs.read(f"{base}/distance")
        if dist_text:
            for other, value in zip(ids, dist_text.split()):
                distances[other] = int(value)
        nodes.append(Node(node_id, node_cpus, memory, distances))
    return nodes


def _meminfo_bytes(text: str | None, key: str) -> int:
    """MemTotal from /proc/meminfo ("MemTotal: 123 kB") or a node meminfo ("Node 0 MemTotal: ...")."""
    if not text:
        return 0
    match = re.search(rf"{key}:\s+(\d+)\s*kB", text)
    return int(match.group(1)) * 1024 if match else 0


def _discover_irqs(fs: HostFS) -> list[Irq]:
    names = _interrupt_names(fs.read("/proc/interrupts"))
    numbers = sorted(int(e) for e in fs.listdir("/proc/irq") or [] if e.isdigit())
    irqs = []
    for number in numbers:
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
        if not label.isdigit():
            continue
        fields = rest.split()
        # counts (one per CPU), then chip name, hwirq/type, then the actions
        tail = fields[ncpus:]
        names[int(label)] = " ".join(tail[2:]) if len(tail) > 2 else " ".join(tail)
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
    online = [c.id for c in cpus if c.online]
    features = {
        "cpu": _cpuinfo(fs.read("/proc/cpuinfo")),
        "os": _os_release(fs.read("/etc/os-release")),
        "cpufreq": _cpufreq(fs),
        "turbo": _turbo(fs),
        "cstates": _cstates(fs, online),
        "sysctls": {name: fs.read("/proc/sys/" + name.replace(".", "/")) for name in SYSCTLS},
        "thp": _thp(fs),
        "irq_default_affinity": _mask(fs.read("/proc/irq/default_smp_affinity")),
        "irqbalance": _irqbalance(fs),
        "smt": fs.read(f"{CPU}/smt/control"),
    }
    features["epp"] = _epp_summary(features["cpufreq"])
    return features


def _mask(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return cpulist.parse_mask(text)
    except HosttuneError:
        return None


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


def _cpufreq(fs: HostFS) -> dict[str, Any]:
    base = f"{CPU}/cpufreq"
    entries = fs.listdir(base)
    policies = sorted((int(e[6:]) for e in entries or [] if re.fullmatch(r"policy\d+", e)))
    if not policies:
        return unsupported(f"no cpufreq policies under {base} (no cpufreq driver; typical of VMs)")
    # one driver serves every policy: its driver-wide files are read from the first policy only
    # (a 1024-CPU host has 1024 policies); per-core limits (hybrid CPUs) are read per policy
    first = f"{base}/policy{policies[0]}"
    driver = fs.read(f"{first}/scaling_driver")
    governors = (fs.read(f"{first}/scaling_available_governors") or "").split()
    available_epp = (fs.read(f"{first}/energy_performance_available_preferences") or "").split()
    result = []
    for pid in policies:
        p = f"{base}/policy{pid}"
        result.append({
            "id": pid,
            "cpus": _cpus(fs, f"{p}/affected_cpus") or _cpus(fs, f"{p}/related_cpus") or [pid],
            "driver": driver,
            "governor": fs.read(f"{p}/scaling_governor"),
            "available_governors": governors,
            "min_khz": _int(fs, f"{p}/scaling_min_freq"),
            "max_khz": _int(fs, f"{p}/scaling_max_freq"),
            "cpuinfo_min_khz": _int(fs, f"{p}/cpuinfo_min_freq"),
            "cpuinfo_max_khz": _int(fs, f"{p}/cpuinfo_max_freq"),
            "base_khz": _base_khz(fs, p),
            "epp": fs.read(f"{p}/energy_performance_preference"),
            "available_epp": available_epp,
        })
    return {"status": "ok", "driver": result[0]["driver"], "policies": result}


def _base_khz(fs: HostFS, policy: str) -> int | None:
    """The guaranteed (non-turbo) frequency, from whichever file the driver provides."""
    for name in ("base_frequency", "amd_pstate_nominal_freq"):
        value = _int(fs, f"{policy}/{name}")
        if value:
            return value
    available = [int(v) for v in (fs.read(f"{policy}/scaling_available_frequencies") or "").split()]
    if len(available) >= 2 and available[0] - available[1] == 1000:
        return available[1]  # acpi-cpufreq lists the turbo range as base + 1 MHz first
    return max(available) if available else None


def _epp_summary(cpufreq: dict[str, Any]) -> dict[str, Any]:
    if cpufreq.get("status") != "ok":
        return unsupported("no cpufreq driver")
    values = sorted({p["epp"] for p in cpufreq["policies"] if p["epp"] is not None})
    if not values:
        return unsupported(f"driver {cpufreq.get('driver')} has no energy_performance_preference")
    return {"status": "ok", "values": values, "available": cpufreq["policies"][0]["available_epp"]}


def _turbo(fs: HostFS) -> dict[str, Any]:
    no_turbo = fs.read(f"{CPU}/intel_pstate/no_turbo")
    if no_turbo is not None:
        return {"status": "ok", "switch": "intel_pstate", "path": f"{CPU}/intel_pstate/no_turbo",
                "enabled": no_turbo.strip() == "0", "pstate_status": fs.read(f"{CPU}/intel_pstate/status")}
    boost = fs.read(f"{CPU}/cpufreq/boost")
    if boost is not None:
        return {"status": "ok", "switch": "cpufreq-boost", "path": f"{CPU}/cpufreq/boost",
                "enabled": boost.strip() == "1"}
    amd = fs.read(f"{CPU}/amd_pstate/status")
    if amd is not None:
        return {**unsupported(f"amd_pstate in {amd} mode exposes no global boost switch"),
                "switch": "amd_pstate", "pstate_status": amd}
    return unsupported("no turbo switch (no intel_pstate/no_turbo, cpufreq/boost or amd_pstate)")


def _cstates(fs: HostFS, online: list[int]) -> dict[str, Any]:
    driver = fs.read(f"{CPU}/cpuidle/current_driver")
    if driver is None or driver == "none" or not online:
        return unsupported(f"no cpuidle driver ({CPU}/cpuidle/current_driver: {driver or 'missing'})")
    first = online[0]
    states = []
    for entry in fs.listdir(f"{CPU}/cpu{first}/cpuidle") or []:
        if not re.fullmatch(r"state\d+", entry):
            continue
        s = f"{CPU}/cpu{first}/cpuidle/{entry}"
        states.append({"state": entry, "name": fs.read(f"{s}/name"), "latency_us": _int(fs, f"{s}/latency"),
                       "disabled": fs.read(f"{s}/disable") == "1"})
    states.sort(key=lambda s: int(s["state"][5:]))
    governor = fs.read(f"{CPU}/cpuidle/current_governor") or fs.read(f"{CPU}/cpuidle/current_governor_ro")
    return {"status": "ok", "driver": driver, "governor": governor, "states": states}


def _thp(fs: HostFS) -> dict[str, Any]:
    enabled = fs.read("/sys/kernel/mm/transparent_hugepage/enabled")
    if enabled is None:
        return unsupported("no /sys/kernel/mm/transparent_hugepage")
    selected = re.search(r"\[(\w+)\]", enabled)
    defrag = fs.read("/sys/kernel/mm/transparent_hugepage/defrag") or ""
    defrag_sel = re.search(r"\[([\w+]+)\]", defrag)
    return {"status": "ok", "enabled": selected.group(1) if selected else enabled,
            "defrag": defrag_sel.group(1) if defrag_sel else None}


def _irqbalance(fs: HostFS) -> dict[str, Any]:
    installed = any(fs.exists(p) for p in ("/usr/sbin/irqbalance", "/usr/bin/irqbalance"))
    sockets = [e for e in fs.listdir("/run/irqbalance") or [] if e.startswith("irqbalance")]
    config = next((p for p in ("/etc/default/irqbalance", "/etc/sysconfig/irqbalance") if fs.exists(p)), None)
    return {"installed": installed, "running": bool(sockets), "config": config}
