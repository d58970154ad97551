"""Generate synthetic /sys + /proc trees shaped like the kernel's, for property tests and the
1024-CPU benchmark. Real-kernel fixtures (tests/fixtures/*.tar.gz) are captured from QEMU guests;
these cover what no guest here can boot (8 sockets, 4000 IRQs, AMD/Intel cpufreq drivers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hosttune import cpulist


@dataclass
class Spec:
    sockets: int = 2
    nodes_per_socket: int = 1
    cores_per_node: int = 4
    threads: int = 1
    irqs: int = 16
    offline: list[int] = field(default_factory=list)
    memoryless: list[int] = field(default_factory=list)  # indexes of nodes without memory
    cpuless_nodes: int = 0  # extra nodes with memory but no CPUs (CXL / HBM style)
    node_ids: list[int] | None = None  # sparse node numbering, e.g. [0, 1, 33, 34]
    cpu_stride: int = 1  # sparse CPU numbering: ids multiplied by this
    smt_interleaved: bool = True  # siblings numbered n and n+ncores (Intel style) vs adjacent
    cpufreq: str | None = "intel_pstate"  # intel_pstate | acpi-cpufreq | amd-pstate | None
    hostname: str = "synthetic"
    # kernel and firmware quirks of real fleets (one tree per quirk in the tests):
    #   masks_only        no *_list files: topology/thread_siblings, core_siblings, node cpumap (old kernels)
    #   nul_empty         empty cpulists printed as a NUL byte and a newline (some 3.10 kernels)
    #   no_global_online  cpuN/online files but no cpu/online
    #   percpu_cpufreq    cpuN/cpufreq/ directories, no cpufreq/policyN/ (pre-4.3)
    #   numa_overlap      the last node's cpulist also lists the first node's CPUs (broken SRAT)
    #   cpu_in_no_node    the last online CPU is in no node's cpulist
    quirks: set[str] = field(default_factory=set)

    @property
    def nodes(self) -> int:
        return self.sockets * self.nodes_per_socket


def _w(root: str, path: str, text: str) -> None:
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as handle:
        handle.write(text + "\n")


def layout(spec: Spec) -> list[dict]:
    """CPU records: id, socket, core, node index, siblings (ids)."""
    ncores = spec.sockets * spec.nodes_per_socket * spec.cores_per_node
    cpus = []
    for core in range(ncores):
        node_index = core // spec.cores_per_node
        socket = node_index // spec.nodes_per_socket
        ids = []
        for t in range(spec.threads):
            raw = core + t * ncores if spec.smt_interleaved else core * spec.threads + t
            ids.append(raw * spec.cpu_stride)
        for cpu_id in ids:
            cpus.append({"id": cpu_id, "socket": socket, "core": core % (spec.cores_per_node * spec.nodes_per_socket),
                         "node_index": node_index, "siblings": ids})
    return sorted(cpus, key=lambda c: c["id"])


def write_tree(root: str, spec: Spec) -> str:
    cpus = layout(spec)
    node_ids = spec.node_ids or list(range(spec.nodes + spec.cpuless_nodes))
    ids = [c["id"] for c in cpus]
    online = [i for i in ids if i not in spec.offline]
    base = "/sys/devices/system/cpu"
    _w(root, f"{base}/possible", cpulist.format(ids))
    _w(root, f"{base}/present", cpulist.format(ids))
    if "no_global_online" not in spec.quirks:
        _w(root, f"{base}/online", cpulist.format(online))
    _w(root, f"{base}/offline", cpulist.format(spec.offline))
    empty = "\x00" if "nul_empty" in spec.quirks else ""
    _w(root, f"{base}/isolated", empty)
    _w(root, f"{base}/nohz_full", empty or "(null)")
    _w(root, f"{base}/smt/control", "on" if spec.threads > 1 else "notsupported")
    for c in cpus:
        d = f"{base}/cpu{c['id']}"
        if c["id"] != 0:
            _w(root, f"{d}/online", "0" if c["id"] in spec.offline else "1")
        if c["id"] in spec.offline:
            os.makedirs(os.path.join(root, d.lstrip("/")), exist_ok=True)
            continue
        _w(root, f"{d}/topology/physical_package_id", str(c["socket"]))
        _w(root, f"{d}/topology/die_id", "0")
        _w(root, f"{d}/topology/core_id", str(c["core"]))
        if "masks_only" in spec.quirks:
            _w(root, f"{d}/topology/thread_siblings", cpulist.format_mask(c["siblings"], len(ids)))
            same_socket = [x["id"] for x in cpus if x["socket"] == c["socket"]]
            _w(root, f"{d}/topology/core_siblings", cpulist.format_mask(same_socket, len(ids)))
        else:
            _w(root, f"{d}/topology/thread_siblings_list", cpulist.format(c["siblings"]))
        for k, (name, lat) in enumerate([("POLL", 0), ("C1", 2), ("C1E", 10), ("C6", 170)]):
            _w(root, f"{d}/cpuidle/state{k}/name", name)
            _w(root, f"{d}/cpuidle/state{k}/latency", str(lat))
            _w(root, f"{d}/cpuidle/state{k}/disable", "0")
    _w(root, f"{base}/cpuidle/current_driver", "intel_idle")
    _w(root, f"{base}/cpuidle/current_governor", "menu")
    if spec.cpufreq:
        _cpufreq(root, spec, online)
    # NUMA nodes
    node_dir = "/sys/devices/system/node"
    all_nodes = len(node_ids)
    for index, node_id in enumerate(node_ids):
        members = [c["id"] for c in cpus if c["node_index"] == index]
        if "numa_overlap" in spec.quirks and index == spec.nodes - 1:
            members = sorted(set(members) | {c["id"] for c in cpus if c["node_index"] == 0})
        if "cpu_in_no_node" in spec.quirks:
            members = [m for m in members if m != online[-1]]
        if "masks_only" in spec.quirks:
            _w(root, f"{node_dir}/node{node_id}/cpumap", cpulist.format_mask(members, len(ids)))
        else:
            _w(root, f"{node_dir}/node{node_id}/cpulist", cpulist.format(members))
        mem_kb = 0 if index in spec.memoryless else 4 * 1024 * 1024
        _w(root, f"{node_dir}/node{node_id}/meminfo", f"Node {node_id} MemTotal:       {mem_kb} kB\nNode {node_id} MemFree: 1 kB")
        dist = [10 if j == index else (16 if j // spec.nodes_per_socket == index // spec.nodes_per_socket else 32)
                for j in range(all_nodes)]
        _w(root, f"{node_dir}/node{node_id}/distance", " ".join(map(str, dist)))
    _w(root, f"{node_dir}/online", cpulist.format(node_ids))
    _w(root, f"{node_dir}/possible", cpulist.format(node_ids))
    # IRQs: spread over the nodes, affinity everywhere
    lines = ["           " + " ".join(f"CPU{i}" for i in online)]
    for n in range(spec.irqs):
        irq = 24 + n
        node = node_ids[n % spec.nodes] if n % 5 else -1
        _w(root, f"/proc/irq/{irq}/smp_affinity_list", cpulist.format(online))
        _w(root, f"/proc/irq/{irq}/node", str(node))
        lines.append(f" {irq}: " + " ".join("0" for _ in online) + f"  PCI-MSIX-0000:{n:04x}  0-edge  dev{n}")
    _w(root, "/proc/interrupts", "\n".join(lines))
    _w(root, "/proc/irq/default_smp_affinity", cpulist.format_mask(online, len(ids)))
    _w(root, "/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet")
    _w(root, "/proc/cpuinfo", "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Synthetic Xeon\n"
                              "flags\t\t: fpu avx2 avx512f avx512_vnni amx_tile\n")
    _w(root, "/proc/meminfo", "MemTotal:       16777216 kB")
    _w(root, "/proc/self/status", f"Name:\tpython\nCpus_allowed_list:\t{cpulist.format(online)}\n"
                                  f"Mems_allowed_list:\t{cpulist.format(node_ids)}")
    _w(root, "/proc/self/cgroup", "0::/system.slice/test.service")
    _w(root, "/proc/sys/kernel/hostname", spec.hostname)
    for name, value in {"kernel/numa_balancing": "1", "kernel/timer_migration": "1", "vm/swappiness": "60",
                        "vm/stat_interval": "1"}.items():
        _w(root, f"/proc/sys/{name}", value)
    _w(root, "/sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never")
    _w(root, "/sys/kernel/mm/transparent_hugepage/defrag", "always defer defer+madvise [madvise] never")
    _w(root, "/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids")
    _w(root, "/sys/fs/cgroup/system.slice/test.service/cpuset.cpus.effective", cpulist.format(online))
    _w(root, "/sys/fs/cgroup/system.slice/test.service/cpuset.mems.effective", cpulist.format(node_ids))
    _w(root, "/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"')
    _w(root, "/etc/default/grub", 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"')
    _w(root, "/etc/default/irqbalance", "#IRQBALANCE_ONESHOT=\n")
    _w(root, "/usr/sbin/irqbalance", "")
    return root


def _cpufreq(root: str, spec: Spec, online: list[int]) -> None:
    base = "/sys/devices/system/cpu/cpufreq"
    driver = spec.cpufreq
    for cpu in online:
        p = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq" if "percpu_cpufreq" in spec.quirks else f"{base}/policy{cpu}"
        _w(root, f"{p}/affected_cpus", str(cpu))
        _w(root, f"{p}/related_cpus", str(cpu))
        _w(root, f"{p}/scaling_driver", driver)
        _w(root, f"{p}/scaling_governor", "powersave" if driver == "intel_pstate" else "schedutil")
        _w(root, f"{p}/scaling_available_governors",
           "performance powersave" if driver == "intel_pstate" else "conservative ondemand userspace powersave performance schedutil")
        _w(root, f"{p}/cpuinfo_min_freq", "800000")
        _w(root, f"{p}/cpuinfo_max_freq", "3500000")
        _w(root, f"{p}/scaling_min_freq", "800000")
        _w(root, f"{p}/scaling_max_freq", "3500000")
        if driver == "intel_pstate":
            _w(root, f"{p}/base_frequency", "2100000")
            _w(root, f"{p}/energy_performance_preference", "balance_performance")
            _w(root, f"{p}/energy_performance_available_preferences",
               "default performance balance_performance balance_power power")
        elif driver == "amd-pstate":
            _w(root, f"{p}/amd_pstate_nominal_freq", "2400000")
        else:
            _w(root, f"{p}/scaling_available_frequencies", "2101000 2100000 1800000 800000")
    if driver == "intel_pstate":
        _w(root, "/sys/devices/system/cpu/intel_pstate/no_turbo", "0")
        _w(root, "/sys/devices/system/cpu/intel_pstate/status", "active")
    elif driver == "acpi-cpufreq":
        _w(root, f"{base}/boost", "1")
    else:
        _w(root, "/sys/devices/system/cpu/amd_pstate/status", "passive")
