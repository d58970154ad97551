"""The plan: one pure function from (Topology, policy) to everything hosttune will do on a host.

The plan is the single source of truth: apply/verify/restore, the agent, the Ansible roles and
the benchmarks read CPU sets and settings from it and never recompute them.
"""

from __future__ import annotations

import json
from typing import Any

from hosttune import areas, cpulist, hwclass, instance_settings
from hosttune.errors import PolicyError
from hosttune.policy import apply_overlay, model_specs
from hosttune.topology import Cpu, Node, Topology

SCHEMA = "hosttune.plan/1"


def make_plan(topo: Topology, policy: dict[str, Any]) -> dict[str, Any]:
    """Compute the plan. Raises PolicyError naming the field when the policy cannot fit the host.
    A policy with a tune_overlay gets its host class's tuned instances keys first (apply_overlay)."""
    class_id = hwclass.class_id(topo)
    policy, tuned = apply_overlay(policy, class_id)
    online = [c for c in topo.cpus if c.online]
    if not online:
        raise PolicyError("the host has no online CPU", where="topology")
    housekeeping, isolated = _partition(topo, online, policy)
    node_rows = _node_rows(topo, housekeeping, isolated)
    instances = _instances(topo, node_rows, policy)
    by_node: dict[int, list[str]] = {}
    for inst in instances:
        by_node.setdefault(inst["node"], []).append(inst["name"])
    for row in node_rows:  # "instance": the first (per_node 1: the only one)
        row["instances"] = by_node.get(row["id"], [])
        row["instance"] = row["instances"][0] if row["instances"] else None
    iso_enabled = policy["isolation"]["enabled"]
    settings, area_fields = areas.plan(areas.PlanContext(topo, policy, housekeeping, isolated))
    plan = {
        "schema": SCHEMA,
        "hostname": topo.hostname,
        "profile": policy["profile"],
        # the host's hardware class (hosttune.hwclass) and what the policy's tune overlay changed
        "hw_class": {"id": class_id, "description": hwclass.describe(topo)},
        "tuned": tuned,
        "policy": policy,
        "nodes": node_rows,
        "housekeeping": sorted(housekeeping),
        "isolated": sorted(isolated) if iso_enabled else [],
        "offline": topo.offline_cpus,
        **area_fields,
        "settings": settings,
        "instances": instances,
        "warnings": _warnings(topo, settings),
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
    slots = [(row, suffix, cpus) for row in selected for suffix, cpus in _split(topo, row, want["per_node"])]
    _check_ports(want, len(slots))
    models = [{"name": name, "version": version} for name, version in model_specs(want)]
    instances = []
    for index, (row, suffix, cpus) in enumerate(slots):
        mems = [_memory_node(topo, row["id"])]
        cores = len(_cores_of([topo.cpu(c) for c in cpus]))
        settings, streams, hint = _openvino(policy, cores, len(cpus))
        nireq = want["nireq"] or max(streams, 2 if hint == "throughput" else 1) * (2 if streams > 1 else 1)
        instance = {
            "name": f"node{row['id']}{suffix}",
            "node": row["id"],
            "cpus": cpus,
            "cpus_list": cpulist.format(cpus),
            # the node's housekeeping CPUs: hosttune serve's own threads (event loop of a pool,
            # waiters, decoders, gRPC) run there, off the inference CPUs (docs/isolation.md)
            "service_cpus": row["housekeeping"],
            "service_cpus_list": cpulist.format(row["housekeeping"]),
            "mems": mems,
            "mems_list": cpulist.format(mems),
            "cores": cores,
            "port": want["base_port"] + index,
            "grpc_port": want["grpc_base_port"] + index,
            "bind": want["bind"],
            # where the host itself reaches the instance: a wildcard bind is reached on the
            # loopback address of its family (agent, bench, roles and nginx all read this)
            "probe_host": probe_host(want["bind"]),
            "probe_url": f"http://{_url_host(probe_host(want['bind']))}:{want['base_port'] + index}",
            "model": models[0]["name"],  # the one bench and the health checks ask for
            "models": models,
            "openvino": settings,
            "hint": hint,
            "streams": streams,
            # `hosttune serve` polls for the next request this long after each answer (OVMS does not)
            "idle_poll_us": want["idle_poll_us"],
            "ovms": {
                "nireq": nireq,
                "target_device": "CPU",
                "plugin_config": {k: (str(v) if not isinstance(v, bool) else ("YES" if v else "NO"))
                                  for k, v in settings.items()},
            },
        }
        # OVMS's config.json for the container (the role mounts the model repository at /models);
        # `hosttune serve --config-path` reads the same file
        instance["ovms"]["config"] = instance_settings.render(instance, instance_settings.CONTAINER_MODELS)
        instances.append(instance)
    return instances


def _check_ports(want: dict[str, Any], count: int) -> None:
    """REST ports base_port.., gRPC ports grpc_base_port..: one each per instance, no overlap."""
    rest = range(want["base_port"], want["base_port"] + count)
    grpc = range(want["grpc_base_port"], want["grpc_base_port"] + count)
    if count and (rest[-1] > 65535 or grpc[-1] > 65535):
        raise PolicyError(f"{count} instances need ports up to {max(rest[-1], grpc[-1])} (above 65535)",
                          where="instances.base_port")
    if set(rest) & set(grpc):
        raise PolicyError(f"the {count} instances' REST ports {rest[0]}-{rest[-1]} overlap their gRPC ports "
                          f"{grpc[0]}-{grpc[-1]}", where="instances.grpc_base_port")


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


def _split(topo: Topology, row: dict[str, Any], per_node: int) -> list[tuple[str, list[int]]]:
    """(name suffix, cpus) of each instance on a node: its isolated CPUs, or with per_node 2 its
    cores in two halves (SMT siblings together; the first gets the odd core)."""
    if per_node == 1:
        return [("", row["isolated"])]
    cores = _cores_of([topo.cpu(c) for c in row["isolated"]])
    if len(cores) < 2:
        raise PolicyError(f"2 instances per node need 2 cores; node {row['id']} has {len(cores)} to isolate",
                          where="instances.per_node")
    half = (len(cores) + 1) // 2
    return [("a", sorted(c for core in cores[:half] for c in core)),
            ("b", sorted(c for core in cores[half:] for c in core))]


def _openvino(policy: dict[str, Any], cores: int, cpus: int) -> tuple[dict[str, Any], int, str]:
    """(OpenVINO CPU plugin properties, streams, hint) for an instance's cpuset. Never NUM_STREAMS
    with a hint: the latency hint is one stream, throughput is NUM_STREAMS. Threads stay on physical
    cores unless instances.smt is true; streams x threads never exceed them."""
    want = policy["instances"]
    hint = want["hint"] or policy["profile"]
    smt = want["smt"]
    if smt and cpus <= cores:
        raise PolicyError(f"the instance's {cpus} CPUs have no SMT siblings to run on", where="instances.smt")
    usable = cpus if smt else cores
    hyper = bool(smt) if smt is not None else (hint == "throughput" and cpus > cores)
    precision = want["inference_precision"]
    extra = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    per_stream, streams = want["threads_per_stream"], want["streams"]
    if hint == "latency":
        if streams not in (None, 1):
            raise PolicyError(f"the latency hint runs 1 stream, got {streams}", where="instances.streams")
        return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": min(usable, per_stream or usable),
                "ENABLE_CPU_PINNING": True, "ENABLE_HYPER_THREADING": hyper, **extra}, 1, hint
    if streams is not None:
        per_stream = per_stream or max(1, usable // streams)
        if streams * per_stream > usable:
            raise PolicyError(f"{streams} streams x {per_stream} threads need {streams * per_stream} CPUs; the "
                              f"instance has {usable}{' (SMT siblings not used)' if usable < cpus else ''}",
                              where="instances.streams")
    else:  # derived: 1 CPU per stream below 8 cores, 4 from 8 on; more than the CPUs: one stream
        per_stream = max(per_stream or (1 if cores < 8 else 4), 1)
        streams = max(1, min(usable, usable // per_stream))
    threads = min(usable, streams * per_stream)
    return {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": threads,
            "ENABLE_CPU_PINNING": True, "ENABLE_HYPER_THREADING": hyper, **extra}, streams, hint


def _warnings(topo: Topology, settings: dict[str, Any]) -> list[str]:
    """What an operator should know before applying: NUMA tables ignored, areas' own warnings."""
    out = []
    numa = topo.features.get("numa", {})
    if numa.get("status") == "ignored":
        out.append(f"NUMA nodes {cpulist.format(numa['firmware_nodes'])} ignored ({numa['reason']}): "
                   f"planned as one node, one instance")
    for name, setting in settings.items():
        out.extend(f"{name}: {w}" for w in setting.get("warnings", []))
    return out


def _check_required(plan: dict[str, Any], policy: dict[str, Any]) -> None:
    for area in policy["required"]:
        setting = plan["settings"].get(area)
        if setting and setting.get("status") == "unsupported":
            raise PolicyError(f"{area} is required but unsupported on this host: {setting['reason']}",
                              where="required")


# -- human view ---------------------------------------------------------------------------------
def render(plan: dict[str, Any]) -> str:
    lines = [f"plan for {plan['hostname']} (profile {plan['profile']})"]
    if plan.get("hw_class"):
        lines.append(f"hardware class {plan['hw_class']['id']}: {plan['hw_class']['description']}")
    tuned = plan.get("tuned")
    if tuned:
        if tuned["decision"] is None:
            lines.append(f"tune overlay: no entry for class {tuned['class']}: the policy's instance settings")
        elif tuned["decision"] != "tuned":
            lines.append(f"tune overlay: {tuned['decision']} on {tuned.get('tuned_on') or '?'}: the policy's instance settings")
        else:
            changed = ", ".join(f"{k}={json.dumps(v['overlay'])}" for k, v in tuned["changed"].items()) or "nothing to change"
            lines.append(f"tune overlay: tuned on {tuned.get('tuned_on') or '?'}: {changed}")
    lines.append("")
    lines.append(f"{'node':>4}  {'housekeeping':<16} {'isolated':<20} {'instance':<10} {'port':>5}  mems")
    instances = {i["node"]: i for i in plan["instances"]}
    for row in plan["nodes"]:
        inst = instances.get(row["id"])
        lines.append(f"{row['id']:>4}  {cpulist.format(row['housekeeping']) or '-':<16} "
                     f"{cpulist.format(row['isolated']) or '-':<20} {inst['name'] if inst else '-':<10} "
                     f"{inst['port'] if inst else '-':>5}  {inst['mems_list'] if inst else '-'}")
    if plan["offline"]:
        lines.append(f"offline CPUs (left alone): {cpulist.format(plan['offline'])}")
    lines += [f"warning: {w}" for w in plan.get("warnings", [])]
    lines += ["", *areas.summary(plan), "", "settings:"]
    for area, setting in plan["settings"].items():
        lines.append(f"  {area:<11} {areas.describe(area, setting)}")
    if plan["instances"]:
        lines += ["", "instances:"]
        for inst in plan["instances"]:
            props = ", ".join(f"{k}={v}" for k, v in inst["openvino"].items())
            lines.append(f"  {inst['name']}: cpus {inst['cpus_list']} mems {inst['mems_list']} "
                         f"{inst['bind']}:{inst['port']} nireq {inst['ovms']['nireq']}"
                         f"{' idle poll %d us' % inst['idle_poll_us'] if inst.get('idle_poll_us') else ''} [{props}]")
    return "\n".join(lines)
