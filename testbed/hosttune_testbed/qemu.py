"""Guest topology as data, and the pure QEMU command-line builder.

Nothing here runs a process: `qemu_args()` turns a `Topology` plus a few paths into an argv list,
so the unit tests can check -smp/-numa/-cpu without booting anything.

QEMU 7.2 facts this relies on (checked on the Debian 12 host):
- NUMA node ids must be contiguous from 0 ("numa: Node ID missing: 1" otherwise).
- A node may be memoryless: `-numa node,nodeid=2,cpus=4-5` with no memdev next to nodes that
  have `memdev=`; `-m` must then equal the sum of the memory backends.
- A node's CPUs may be non-contiguous: repeat `cpus=` (`cpus=0-1,cpus=4-5`).
- Under TCG `-cpu max` has the AMD vendor and no `topoext` (TCG cannot provide it), so a Linux
  guest sees 1 thread per core whatever `threads=` says; an Intel-vendor model makes the kernel
  read the SMT level from CPUID leaf 0xB, which QEMU fills from -smp (see SMT_CPU_MODEL).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hosttune import cpulist
from hosttune_testbed.errors import TestbedError

# Without ERMS: with it the guest kernel clears pages with `rep stosb` (clear_page_erms), which
# under TCG QEMU 7.2 can take tens of seconds: a 16-vCPU guest booted with isolcpus/nohz_full
# logged 5 soft lockups, all in clear_page_erms, and took 4 min 11 s to boot; with -erms the same
# boot took 1 min 27 s without a lockup (the kernel then clears pages with plain stores).
# CPU model when the topology has no SMT: TCG's richest model (AVX2 and friends under QEMU 7.2).
DEFAULT_CPU_MODEL = "max,-erms"
# CPU model when threads > 1 (must make the guest report thread siblings; checked in a guest).
SMT_CPU_MODEL = "max,vendor=GenuineIntel,-erms"

ACCELS = ("tcg", "kvm", "auto")
# UEFI firmware (Debian's ovmf package): the code read-only, a copy of the variable store per guest.
# The non-secure-boot build: it runs on the `pc` machine without SMM.
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


@dataclass(frozen=True)
class NumaNode:
    cpus: tuple[int, ...]
    memory_mib: int

    @property
    def cpulist(self) -> str:
        return cpulist.format(self.cpus)


@dataclass(frozen=True)
class Topology:
    """A guest's CPU/NUMA shape. CPU ids are QEMU's (and the guest kernel's) logical numbering:
    socket-major, then die, core, thread - so with threads=2, CPUs 2k and 2k+1 are siblings."""

    sockets: int
    cores: int
    threads: int = 1
    dies: int = 1
    nodes: tuple[NumaNode, ...] = ()
    memory_mib: int | None = None  # total when `nodes` is empty; else the sum of the nodes
    cpu_model: str | None = None  # None: DEFAULT_CPU_MODEL, or SMT_CPU_MODEL when threads > 1
    kernel_args: str = ""  # extra kernel args, put in place by a GRUB drop-in + reboot after boot
    offline: tuple[int, ...] = ()  # CPUs taken offline after every boot
    name: str = "custom"
    description: str = ""

    @property
    def cpus(self) -> int:
        return self.sockets * self.dies * self.cores * self.threads

    @property
    def total_memory_mib(self) -> int:
        if self.nodes:
            return sum(n.memory_mib for n in self.nodes)
        return self.memory_mib or 1024

    @property
    def effective_cpu_model(self) -> str:
        if self.cpu_model:
            return self.cpu_model
        return SMT_CPU_MODEL if self.threads > 1 else DEFAULT_CPU_MODEL

    def validate(self) -> Topology:
        where = f"topology {self.name}"
        for attr in ("sockets", "cores", "threads", "dies"):
            if getattr(self, attr) < 1:
                raise TestbedError(f"{attr} must be >= 1", where)
        if self.nodes:
            seen: dict[int, int] = {}
            for i, node in enumerate(self.nodes):
                if not node.cpus:
                    raise TestbedError(f"node {i} has no CPUs (QEMU needs cpus= per node)", where)
                if node.memory_mib < 0:
                    raise TestbedError(f"node {i} has negative memory", where)
                for cpu in node.cpus:
                    if cpu >= self.cpus:
                        raise TestbedError(
                            f"node {i} names CPU {cpu} but the topology has {self.cpus} CPUs", where
                        )
                    if cpu in seen:
                        raise TestbedError(f"CPU {cpu} is in node {seen[cpu]} and node {i}", where)
                    seen[cpu] = i
            missing = sorted(set(range(self.cpus)) - set(seen))
            if missing:
                raise TestbedError(f"CPUs {cpulist.format(missing)} are in no NUMA node", where)
            if not any(n.memory_mib for n in self.nodes):
                raise TestbedError("at least one NUMA node needs memory", where)
        elif self.total_memory_mib < 128:
            raise TestbedError("memory must be >= 128 MiB", where)
        for cpu in self.offline:
            if cpu >= self.cpus:
                raise TestbedError(f"offline CPU {cpu} does not exist", where)
        if len(set(self.offline)) >= self.cpus:
            raise TestbedError("cannot take every CPU offline", where)
        return self

    def with_memory(self, total_mib: int) -> Topology:
        """The same shape with `total_mib` spread evenly over the nodes that have memory."""
        if not self.nodes:
            return _replace(self, memory_mib=total_mib)
        holders = [i for i, n in enumerate(self.nodes) if n.memory_mib]
        share, rest = divmod(total_mib, len(holders))
        nodes = []
        for i, node in enumerate(self.nodes):
            mem = 0
            if i in holders:
                mem = share + (rest if i == holders[-1] else 0)
            nodes.append(NumaNode(node.cpus, mem))
        return _replace(self, nodes=tuple(nodes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "sockets": self.sockets,
            "dies": self.dies,
            "cores": self.cores,
            "threads": self.threads,
            "nodes": [{"cpus": n.cpulist, "memory_mib": n.memory_mib} for n in self.nodes],
            "memory_mib": self.total_memory_mib,
            "cpu_model": self.cpu_model,
            "kernel_args": self.kernel_args,
            "offline": cpulist.format(self.offline),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> Topology:
        name = name or str(data.get("name", "custom"))
        known = {"name", "description", "sockets", "dies", "cores", "threads", "nodes",
                 "memory_mib", "cpu_model", "kernel_args", "offline"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TestbedError(f"unknown keys {unknown}", f"topology {name}")
        nodes = []
        for i, node in enumerate(data.get("nodes") or ()):
            try:
                cpus = node["cpus"]
                ids = cpulist.parse(cpus) if isinstance(cpus, str) else sorted(int(c) for c in cpus)
                nodes.append(NumaNode(tuple(ids), int(node.get("memory_mib", 0))))
            except (KeyError, TypeError, ValueError) as exc:
                raise TestbedError(f"bad node {i}: {exc}", f"topology {name}") from None
        offline = data.get("offline") or ()
        if isinstance(offline, str):
            offline = cpulist.parse(offline)
        try:
            topo = cls(
                sockets=int(data.get("sockets", 1)),
                dies=int(data.get("dies", 1)),
                cores=int(data.get("cores", 1)),
                threads=int(data.get("threads", 1)),
                nodes=tuple(nodes),
                memory_mib=None if nodes else int(data.get("memory_mib", 1024)),
                cpu_model=data.get("cpu_model") or None,
                kernel_args=str(data.get("kernel_args", "") or ""),
                offline=tuple(sorted(int(c) for c in offline)),
                name=name,
                description=str(data.get("description", "")),
            )
        except (TypeError, ValueError) as exc:
            raise TestbedError(str(exc), f"topology {name}") from None
        return topo.validate()


def _replace(topo: Topology, **changes: Any) -> Topology:
    from dataclasses import replace

    return replace(topo, **changes)


def smp_arg(topo: Topology) -> str:
    parts = [str(topo.cpus), f"sockets={topo.sockets}"]
    if topo.dies != 1:
        parts.append(f"dies={topo.dies}")
    parts += [f"cores={topo.cores}", f"threads={topo.threads}"]
    return ",".join(parts)


def _ranges(ids: Sequence[int]) -> list[str]:
    """QEMU's cpus= takes one range; a non-contiguous set is several cpus= options."""
    return cpulist.format(ids).split(",")


def numa_args(topo: Topology) -> list[str]:
    args: list[str] = []
    for i, node in enumerate(topo.nodes):
        if node.memory_mib:
            args += ["-object", f"memory-backend-ram,id=mem{i},size={node.memory_mib}M"]
    for i, node in enumerate(topo.nodes):
        opts = [f"node,nodeid={i}"] + [f"cpus={r}" for r in _ranges(node.cpus)]
        if node.memory_mib:
            opts.append(f"memdev=mem{i}")
        args += ["-numa", ",".join(opts)]
    return args


def accel_args(accel: str, vcpus: int) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm"]
    if accel == "tcg":
        return ["-accel", f"tcg,thread={tcg_thread_mode(vcpus)}"]
    raise TestbedError(f"unknown accelerator {accel!r} (one of tcg, kvm)")


def tcg_thread_mode(vcpus: int, host_cpus: int | None = None) -> str:
    """HOSTTUNE_TESTBED_TCG_THREAD: multi (a host thread per vCPU), single (every vCPU in one
    host thread, round robin) or auto (default): multi only when the host has a CPU per vCPU.
    On a host with fewer CPUs, multi-threaded TCG spends its time waiting for descheduled vCPU
    threads (seen: a 16-vCPU guest booted in 87 s single-threaded, over 300 s multi-threaded, on
    2 host CPUs)."""
    mode = os.environ.get("HOSTTUNE_TESTBED_TCG_THREAD", "auto").strip().lower()
    if mode not in ("auto", "multi", "single"):
        raise TestbedError(f"HOSTTUNE_TESTBED_TCG_THREAD={mode!r}: expected auto, multi or single")
    if mode == "auto":
        host = host_cpus if host_cpus is not None else len(os.sched_getaffinity(0))
        mode = "multi" if host >= vcpus else "single"
    return mode


def resolve_accel(value: str | None = None) -> str:
    """HOSTTUNE_TESTBED_ACCEL (or `value`): tcg (default), kvm, or auto."""
    accel = (value or os.environ.get("HOSTTUNE_TESTBED_ACCEL") or "tcg").strip().lower()
    if accel not in ACCELS:
        raise TestbedError(f"HOSTTUNE_TESTBED_ACCEL={accel!r}: expected one of {', '.join(ACCELS)}")
    return accel


@dataclass
class BootSpec:
    """Everything one QEMU invocation needs besides the topology."""

    name: str
    disk: str
    disk_format: str = "qcow2"
    ssh_port: int = 2222
    console_log: str = "console.log"
    qmp_socket: str = "qmp.sock"
    pidfile: str = "qemu.pid"
    accel: str = "tcg"
    kernel: str | None = None  # direct kernel boot (only the image build's first boot)
    initrd: str | None = None
    append: str | None = None
    daemonize: bool = True
    extra: list[str] = field(default_factory=list)
    firmware_vars: str | None = None  # UEFI: this guest's copy of OVMF_VARS; None: SeaBIOS


def qemu_args(topo: Topology, spec: BootSpec, binary: str = "qemu-system-x86_64") -> list[str]:
    topo.validate()
    args = [
        binary,
        "-name", f"hosttune-{spec.name},process=hosttune-{spec.name}",
        "-machine", "pc",
        *accel_args(spec.accel, topo.cpus),
        "-cpu", topo.effective_cpu_model,
        "-smp", smp_arg(topo),
        "-m", f"{topo.total_memory_mib}M",
        *numa_args(topo),
        "-drive",
        f"file={spec.disk},format={spec.disk_format},if=virtio,cache=unsafe,discard=unmap",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        # UEFI: no iPXE option ROM, so OVMF does not try (and wait on) a network boot first
        "-device", "virtio-net-pci,netdev=n0" + (",romfile=" if spec.firmware_vars else ""),
        "-device", "virtio-rng-pci",
        "-display", "none",
        "-vga", "none",
        "-serial", f"file:{spec.console_log}",
        "-monitor", "none",
        "-qmp", f"unix:{spec.qmp_socket},server=on,wait=off",
        "-pidfile", spec.pidfile,
        "-no-user-config",
    ]
    if spec.firmware_vars:
        args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={spec.firmware_vars}"]
    if spec.kernel:
        args += ["-kernel", spec.kernel]
        if spec.initrd:
            args += ["-initrd", spec.initrd]
        if spec.append:
            args += ["-append", spec.append]
    if spec.daemonize:
        args.append("-daemonize")
    args += list(spec.extra)
    return args


def topology_summary(topo: Topology) -> str:
    nodes = "; ".join(
        f"node{i} cpus {n.cpulist} {n.memory_mib} MiB" for i, n in enumerate(topo.nodes)
    ) or f"1 node {topo.total_memory_mib} MiB"
    return (
        f"{topo.name}: {topo.cpus} CPUs = {topo.sockets} sockets x "
        + (f"{topo.dies} dies x " if topo.dies != 1 else "")
        + f"{topo.cores} cores x {topo.threads} threads; {nodes}; cpu {topo.effective_cpu_model}"
    )

