"""The plan: one pure function from (Topology, policy) to everything hosttune will do on a host.

The plan is the single source of truth: apply/verify/restore, the agent, the Ansible roles and
the benchmarks read CPU sets and settings from it and never recompute them.
"""

from __future__ import annotations

from typing import Any

from hosttune import cpulist
from hosttune.errors import PolicyError
from hosttune.topology import Cpu, Node, Topology, unsupported

SCHEMA = "hosttune.plan/1"


def make_plan(topo: Topology, policy: dict[str, Any]) -> dict[str, Any]:
    """Compute the plan. Raises PolicyError naming the field when the policy cannot fit the host."""
    online = [c for c in topo.cpus if c.online]
    if not online:
        raise PolicyError("the host has no online CPU", where="topology")
    housekeeping, isolated = _partition(topo, online, policy)
    node_rows = _node_rows(topo, housekeeping, isolated)
    instances = _instances(topo, node_rows, policy)
    by_node = {i["node"]: i["name"] for i in instances}
    for row in node_rows:
        row["instance"] = by_node.get(row["id"])
    iso_enabled = policy["isolation"]["enabled"]
    plan = {
        "schema": SCHEMA,
        "hostname": topo.hostname,
        "profile": policy["profile"],
        "policy": policy,
        "nodes": node_rows,
        "housekeeping": sorted(housekeeping),
        "isolated": sorted(isolated) if iso_enabled else [],
        "offline": topo.offline_cpus,
        "kernel_args": _kernel_args(policy, housekeeping, isolated),
        "settings": {
            "cpufreq": _cpufreq(topo, policy),
            "turbo": _turbo(topo, policy),
            "epp": _epp(topo, policy),
            "cstates": _cstates(topo, policy, isolated),
            "sysctls": _sysctls(policy),
            "thp": _thp(topo, policy),
            "irqs": _irqs(topo, policy, housekeeping),
            "irqbalance": _irqbalance(topo, policy, isolated),
        },
        "instances": instances,
    }
    _check_required(plan, policy)
    return plan


# -- CPU partition ------------------------------------------------------------------------------
def _cores_of(cpus: list[Cpu]) -> list[list[int]]:
    """Group CPUs into physical cores (SMT siblings together), ordered by their lowest CPU id."""
    cores: dict[tuple, list[int]] = {}
    for cpu in cpus:
        cores.setdefault(cpu.core_key, []).append(cpu.id)
    return sorted((sorted(ids) for ids in cores.values()), key=lambda ids: ids[0])


def _online_by_node(topo: Topology, online: list[Cpu]) -> dict[int | None, list[Cpu]]:
    groups: dict[int | None, list[Cpu]] = {}
    for cpu in online:
        groups.setdefault(cpu.node, []).append(cpu)
    return groups


def _partition(topo: Topology, online: list[Cpu], policy: dict[str, Any]) -> tuple[set[int], set[int]]:
    online_ids = {c.id for c in online}
    by_node = _online_by_node(topo, online)
    hk_text, iso_text = policy["housekeeping"]["cpus"], policy["isolation"]["cpus"]
    if hk_text is not None or iso_text is not None:
        field = "housekeeping.cpus" if hk_text is not None else "isolation.cpus"
        given = set(cpulist.parse(hk_text if hk_text is not None else iso_text))
        missing = given - online_ids
        if missing:
            raise PolicyError(f"CPUs {cpulist.format(missing)} are not online on this host "
                              f"(online: {cpulist.format(online_ids)})", where=field)
        housekeeping = given if hk_text is not None else online_ids - given
        if iso_text is not None and hk_text is not None:
            isolated = set(cpulist.parse(iso_text))
            spare = online_ids - housekeeping - isolated
            housekeeping |= spare  # CPUs named in neither set stay with the OS
        for node_id, cpus in by_node.items():
            if not housekeeping & {c.id for c in cpus}:
                raise PolicyError(f"node {node_id} would keep no housekeeping CPU", where=field)
        split = _split_siblings(online, housekeeping)
        if split:
            raise PolicyError(f"SMT siblings must stay together; CPUs {cpulist.format(split)} are split from "
                              f"their core's siblings", where=field)
    else:
        count = policy["housekeeping"]["cores_per_node"]
        housekeeping = set()
        for node_id, cpus in sorted(by_node.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            cores = _cores_of(cpus)
            if count >= len(cores):
                raise PolicyError(f"{count} >= the {len(cores)} core(s) of node {node_id}: "
                                  f"nothing would be left to isolate there", where="housekeeping.cores_per_node")
            for core in cores[:count]:
                housekeeping.update(core)
    isolated = online_ids - housekeeping
    if not housekeeping:
        raise PolicyError("the policy would isolate every CPU; keep at least one per node", where="housekeeping")
    if not isolated:
        raise PolicyError("the policy leaves no CPU to isolate", where="housekeeping")
    return housekeeping, isolated


def _split_siblings(online: list[Cpu], chosen: set[int]) -> set[int]:
    split: set[int] = set()
    for cpu in online:
        sibs = set(cpu.siblings)
        if cpu.id in chosen and not sibs <= chosen:
            split |= sibs
    return split


def _node_rows(topo: Topology, housekeeping: set[int], isolated: set[int]) -> list[dict[str, Any]]:
    rows = []
    for node in topo.nodes:
        cpus = set(node.cpus)
        rows.append({
            "id": node.id,
            "cpus": sorted(cpus),
            "memory_bytes": node.memory_bytes,
            "housekeeping": sorted(cpus & housekeeping),
            "isolated": sorted(cpus & isolated),
            "offline": sorted(cpus - housekeeping - isolated),
        })
    return rows


# -- kernel command line ------------------------------------------------------------------------
def _kernel_args(policy: dict[str, Any], housekeeping: set[int], isolated: set[int]) -> list[str]:
    iso = policy["isolation"]
    if not iso["enabled"]:
        return list(iso["extra_kernel_args"])
    iso_list = cpulist.format(isolated)
    flags = ",".join(iso["isolcpus_flags"])
    args = [f"isolcpus={flags},{iso_list}" if flags else f"isolcpus={iso_list}"]
    if iso["nohz_full"]:
        args.append(f"nohz_full={iso_list}")
    if iso["rcu_nocbs"]:
        args.append(f"rcu_nocbs={iso_list}")
    if iso["irqaffinity"]:
        args.append(f"irqaffinity={cpulist.format(housekeeping)}")
    return args + list(iso["extra_kernel_args"])


# -- runtime settings ---------------------------------------------------------------------------
def _cpufreq(topo: Topology, policy: dict[str, Any]) -> dict[str, Any]:
    info = topo.features.get("cpufreq", {})
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no cpufreq"))
    want = policy["cpufreq"]
    policies = []
    for pol in info["policies"]:
        governor = want["governor"]
        if pol["available_governors"] and governor not in pol["available_governors"]:
            raise PolicyError(f"governor {governor!r} is not offered by {pol['driver']} "
                              f"(available: {' '.join(pol['available_governors'])})", where="cpufreq.governor")
        lock = want["lock"]
        lo, hi = pol["cpuinfo_min_khz"], pol["cpuinfo_max_khz"]
        if lock == "none":
            khz = None
        elif lock == "base":
            khz = pol["base_khz"] or hi
        elif lock == "max":
            khz = hi
        else:
            khz = int(lock) * 1000
            if lo and hi and not lo <= khz <= hi:
                raise PolicyError(f"{lock} MHz is outside policy{pol['id']}'s range {lo // 1000}-{hi // 1000} MHz",
                                  where="cpufreq.lock")
        policies.append({"id": pol["id"], "cpus": pol["cpus"], "governor": governor,
                         "min_khz": khz, "max_khz": khz})
    return {"status": "planned", "policies": policies}


def _turbo(topo: Topology, policy: dict[str, Any]) -> dict[str, Any]:
    mode = policy["cpufreq"]["turbo"]
    info = topo.features.get("turbo", {})
    if mode == "keep":
        return {"status": "skipped", "reason": "cpufreq.turbo is keep"}
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no turbo switch"))
    on = mode == "on"
    value = ("0" if on else "1") if info["switch"] == "intel_pstate" else ("1" if on else "0")
    return {"status": "planned", "switch": info["switch"], "path": info["path"], "value": value}


def _epp(topo: Topology, policy: dict[str, Any]) -> dict[str, Any]:
    want = policy["cpufreq"]["epp"]
    info = topo.features.get("epp", {})
    if want is None:
        return {"status": "skipped", "reason": "cpufreq.epp is null"}
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no EPP"))
    if info["available"] and want not in info["available"]:
        raise PolicyError(f"EPP {want!r} is not offered (available: {' '.join(info['available'])})",
                          where="cpufreq.epp")
    policies = [p["id"] for p in topo.features["cpufreq"]["policies"] if p["epp"] is not None]
    return {"status": "planned", "value": want, "policies": policies}


def _cstates(topo: Topology, policy: dict[str, Any], isolated: set[int]) -> dict[str, Any]:
    limit = policy["cstates"]["max_latency_us"]
    info = topo.features.get("cstates", {})
    if limit is None:
        return {"status": "skipped", "reason": "cstates.max_latency_us is null"}
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no cpuidle"))
    deep = [s["state"] for s in info["states"] if s["latency_us"] is not None and s["latency_us"] > limit]
    # only the instance CPUs: housekeeping CPUs may still sleep deeply and save power
    return {"status": "planned", "disable": deep, "cpus": sorted(isolated), "max_latency_us": limit}


def _sysctls(policy: dict[str, Any]) -> dict[str, Any]:
    values = {k: str(v) for k, v in sorted(policy["sysctls"].items())}
    if not values:
        return {"status": "skipped", "reason": "sysctls is empty"}
    return {"status": "planned", "values": values}


def _thp(topo: Topology, policy: dict[str, Any]) -> dict[str, Any]:
    mode = policy["thp"]
    if mode == "keep":
        return {"status": "skipped", "reason": "thp is keep"}
    info = topo.features.get("thp", {})
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no THP"))
    return {"status": "planned", "enabled": mode}


def _irqs(topo: Topology, policy: dict[str, Any], housekeeping: set[int]) -> dict[str, Any]:
    if not policy["irqs"]["pin"]:
        return {"status": "skipped", "reason": "irqs.pin is false"}
    hk_by_node: dict[int | None, list[int]] = {}
    for cpu_id in sorted(housekeeping):
        hk_by_node.setdefault(topo.cpu(cpu_id).node, []).append(cpu_id)
    everywhere = sorted(housekeeping)
    pins = []
    for irq in topo.irqs:
        if irq.affinity is None:
            continue  # unreadable affinity: the kernel manages it (per-CPU or managed IRQ)
        target = hk_by_node.get(irq.node) or everywhere
        pins.append({"irq": irq.irq, "name": irq.name, "node": irq.node, "cpus": target})
    return {"status": "planned", "default_affinity": everywhere, "pin": pins}


def _irqbalance(topo: Topology, policy: dict[str, Any], isolated: set[int]) -> dict[str, Any]:
    mode = policy["irqs"]["irqbalance"]
    info = topo.features.get("irqbalance", {})
    if mode == "keep":
        return {"status": "skipped", "reason": "irqs.irqbalance is keep"}
    if not info.get("installed"):
        return unsupported("irqbalance is not installed")
    family = topo.features.get("os", {}).get("family")
    config = info.get("config") or ("/etc/sysconfig/irqbalance" if family == "redhat" else "/etc/default/irqbalance")
    return {"status": "planned", "mode": mode, "config": config,
            "banned_cpulist": cpulist.format(isolated), "banned_mask": cpulist.format_mask(isolated)}


# -- instances ----------------------------------------------------------------------------------
def _instances(topo: Topology, node_rows: list[dict[str, Any]], policy: dict[str, Any]) -> list[dict[str, Any]]:
    want = policy["instances"]
    if not want["enabled"]:
        return []
    known = {n.id for n in topo.nodes}
    if want["nodes"] == "all":
        selected = [row for row in node_rows if row["isolated"]]
    else:
        for node_id in want["nodes"]:
            if node_id not in known:
                raise PolicyError(f"node {node_id} does not exist (nodes: {cpulist.format(known)})",
                                  where="instances.nodes")
        selected = [row for row in node_rows if row["id"] in want["nodes"]]
        empty = [row["id"] for row in selected if not row["isolated"]]
        if empty:
            raise PolicyError(f"node(s) {cpulist.format(empty)} have no CPUs for an instance",
                              where="instances.nodes")
    instances = []
    for index, row in enumerate(selected):
        cpus = row["isolated"]
        mems = [_memory_node(topo, row["id"])]
        cores = len(_cores_of([topo.cpu(c) for c in cpus]))
        settings, streams = _openvino(policy, cores, len(cpus))
        nireq = max(streams, 2 if policy["profile"] == "throughput" else 1) * (2 if streams > 1 else 1)
        instances.append({
            "name": f"node{row['id']}",
            "node": row["id"],
            "cpus": cpus,
            "cpus_list": cpulist.format(cpus),
            "mems": mems,
            "mems_list": cpulist.format(mems),
            "cores": cores,
            "port": want["base_port"] + index,
            "bind": want["bind"],
            # where the host itself reaches the instance: a wildcard bind is reached on the
            # loopback address of its family (agent, bench, roles and nginx all read this)
            "probe_host": probe_host(want["bind"]),
            "probe_url": f"http://{_url_host(probe_host(want['bind']))}:{want['base_port'] + index}",
            "model": want["model"],
            "openvino": settings,
            "streams": streams,
            "ovms": {
                "nireq": nireq,
                "target_device": "CPU",
                "plugin_config": {k: (str(v) if not isinstance(v, bool) else ("YES" if v else "NO"))
                                  for k, v in settings.items()},
            },
        })
    return instances


def probe_host(bind: str) -> str:
    """The address that reaches a server bound to `bind` from the same host."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind, bind)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _memory_node(topo: Topology, node_id: int) -> int:
    """The node itself, or for a memoryless node the nearest node that has memory."""
    nodes = {n.id: n for n in topo.nodes}
    node: Node = nodes[node_id]
    if node.memory_bytes > 0 or not node.distances:
        return node_id
    with_memory = [n for n in topo.nodes if n.memory_bytes > 0]
    if not with_memory:
        return node_id
    return min(with_memory, key=lambda n: (node.distances.get(n.id, 10**6), n.id)).id


def _openvino(policy: dict[str, Any], cores: int, cpus: int) -> tuple[dict[str, Any], int]:
    """OpenVINO CPU plugin properties for an instance's cpuset. Never NUM_STREAMS with a hint;
    streams never exceed cores; threads stay on physical cores."""
    precision = policy["instances"]["inference_precision"]
    extra = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    if policy["profile"] == "latency":
        return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": cores,
                "ENABLE_CPU_PINNING": True, "ENABLE_HYPER_THREADING": False, **extra}, 1
    per_stream = policy["instances"]["threads_per_stream"] or (1 if cores < 8 else 4)
    streams = max(1, min(cores, cores // max(per_stream, 1)))
    threads = min(cores, streams * max(per_stream, 1))
    return {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": threads,
            "ENABLE_CPU_PINNING": True, "ENABLE_HYPER_THREADING": cpus > cores, **extra}, streams


def _check_required(plan: dict[str, Any], policy: dict[str, Any]) -> None:
    for area in policy["required"]:
        setting = plan["settings"].get(area)
        if setting and setting.get("status") == "unsupported":
            raise PolicyError(f"{area} is required but unsupported on this host: {setting['reason']}",
                              where="required")


# -- human view ---------------------------------------------------------------------------------
def render(plan: dict[str, Any]) -> str:
    lines = [f"plan for {plan['hostname']} (profile {plan['profile']})", ""]
    lines.append(f"{'node':>4}  {'housekeeping':<16} {'isolated':<20} {'instance':<10} {'port':>5}  mems")
    instances = {i["node"]: i for i in plan["instances"]}
    for row in plan["nodes"]:
        inst = instances.get(row["id"])
        lines.append(f"{row['id']:>4}  {cpulist.format(row['housekeeping']) or '-':<16} "
                     f"{cpulist.format(row['isolated']) or '-':<20} {inst['name'] if inst else '-':<10} "
                     f"{inst['port'] if inst else '-':>5}  {inst['mems_list'] if inst else '-'}")
    if plan["offline"]:
        lines.append(f"offline CPUs (left alone): {cpulist.format(plan['offline'])}")
    lines += ["", "kernel arguments: " + (" ".join(plan["kernel_args"]) or "(none)"), "", "settings:"]
    for area, setting in plan["settings"].items():
        lines.append(f"  {area:<11} {_describe(area, setting)}")
    if plan["instances"]:
        lines += ["", "instances:"]
        for inst in plan["instances"]:
            props = ", ".join(f"{k}={v}" for k, v in inst["openvino"].items())
            lines.append(f"  {inst['name']}: cpus {inst['cpus_list']} mems {inst['mems_list']} "
                         f"{inst['bind']}:{inst['port']} nireq {inst['ovms']['nireq']} [{props}]")
    return "\n".join(lines)


def _describe(area: str, setting: dict[str, Any]) -> str:
    status = setting.get("status")
    if status in ("unsupported", "skipped"):
        return f"{status}: {setting['reason']}"
    if area == "cpufreq":
        first = setting["policies"][0]
        lock = f"locked at {first['min_khz'] // 1000} MHz" if first["min_khz"] else "not locked"
        return f"governor {first['governor']}, {lock} ({len(setting['policies'])} policies)"
    if area == "turbo":
        return f"{setting['switch']}: write {setting['value']} to {setting['path']}"
    if area == "epp":
        return f"{setting['value']} on {len(setting['policies'])} policies"
    if area == "cstates":
        deep = ", ".join(setting["disable"]) or "none deeper than the limit"
        return f"disable {deep} on CPUs {cpulist.format(setting['cpus'])}"
    if area == "sysctls":
        return " ".join(f"{k}={v}" for k, v in setting["values"].items())
    if area == "thp":
        return f"enabled={setting['enabled']}"
    if area == "irqs":
        return (f"{len(setting['pin'])} IRQs onto node-local housekeeping CPUs, default affinity "
                f"{cpulist.format(setting['default_affinity'])}")
    if area == "irqbalance":
        return (f"{setting['mode']} (banned {setting['banned_cpulist']}) via {setting['config']}"
                if setting["mode"] == "ban" else f"{setting['mode']}")
    return str(setting)
