# Copyright: hosttune contributors
# Apache License 2.0 (see LICENSE at the collection root)
# Prometheus file_sd targets of the fleet, from the inventory and each host's plan (the fact
# hosttune_plan the hosttune_agent and hosttune_instances roles publish). docs/monitoring.md.
"""hosttune.tuning.prometheus_file_sd: one implementation of "which endpoints does the fleet have"."""

from __future__ import annotations

import ipaddress
import re

from ansible.errors import AnsibleFilterError

AGENT_PORT = 9477  # the agent's default (hosttune/agent/config.py AgentSettings.port)
AGENT_LISTEN = "127.0.0.1"  # and its default address
_WILDCARD = ("0.0.0.0", "::", "")
_LOOPBACK = ("127.", "::1", "localhost")
KINDS = ("agent", "instances")


# a DNS name as RFC 1123 spells it (labels of letters, digits and inner hyphens), or an IP address:
# what Prometheus accepts as a target's host, and nothing that could change the file_sd document
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def _target(host, address, port, what):
    """"address:port" of one endpoint, both checked: a name or IP address, a port 1-65535."""
    address = str(address)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
        if not _HOSTNAME.fullmatch(address):
            raise AnsibleFilterError(f"{host}: {what}: {address[:80]!r} is not a host name or IP address")
    digits = isinstance(port, str) and port.isascii() and port.isdigit() and len(port) <= 5
    if isinstance(port, bool) or not (isinstance(port, int) or digits):
        raise AnsibleFilterError(f"{host}: {what}: the port must be a number from 1 to 65535, got {str(port)[:20]!r}")
    if not 1 <= int(port) <= 65535:
        raise AnsibleFilterError(f"{host}: {what}: the port must be a number from 1 to 65535, got {port}")
    shown = f"[{address}]" if ip is not None and ip.version == 6 else address
    return f"{shown}:{int(port)}"


def _address(host, listen, inventory_address, what):
    """Where a central Prometheus reaches an endpoint that listens on `listen`."""
    listen = str(listen)
    if listen in _WILDCARD:
        address = str(inventory_address)
    elif listen.startswith(_LOOPBACK):
        # its own loopback address would make Prometheus scrape itself under this host's label
        raise AnsibleFilterError(f"{host}: {what} listens on {listen} only; a central Prometheus cannot reach "
                                 f"it (listen on the host's address or 0.0.0.0)")
    else:
        address = listen
    return address


def prometheus_file_sd(hostvars, hosts, kind="instances"):
    """Prometheus file_sd target groups for `hosts` (inventory names), read from `hostvars`:
    kind "agent" - each host's agent (hosttune_agent_options.listen/port, the agent's defaults
    otherwise), labels host; kind "instances" - each plan instance (its bind and port), labels
    host, node (the NUMA node: the label monitoring/alerts.yml and the dashboard group by) and
    inference_instance (the plan instance, as the agent's metrics name it). A wildcard address is
    reached at the host's ansible_host (else its inventory name). A host without a plan, or an endpoint bound to
    loopback only, is an error naming the host: no host's targets are left out silently."""
    if kind not in KINDS:
        raise AnsibleFilterError(f"prometheus_file_sd: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(hosts, (str, bytes)):
        hosts = [hosts]
    groups, missing = [], []
    for host in hosts:
        hv = hostvars[host]
        address = hv.get("ansible_host") or host
        if kind == "agent":
            options = hv.get("hosttune_agent_options") or {}
            target = _target(host, _address(host, options.get("listen", AGENT_LISTEN), address, "the agent"),
                             options.get("port", AGENT_PORT), "the agent")
            groups.append({"targets": [target], "labels": {"host": str(host)}})
            continue
        plan = hv.get("hosttune_plan")
        if not isinstance(plan, dict) or not isinstance(plan.get("instances"), list):
            missing.append(str(host))
            continue
        for inst in plan["instances"]:
            what = f"instance {inst['name']}"
            groups.append({
                "targets": [_target(host, _address(host, inst["bind"], address, what), inst["port"], what)],
                "labels": {"host": str(host), "node": str(inst["node"]), "inference_instance": str(inst["name"])},
            })
    if missing:
        raise AnsibleFilterError(f"no hosttune_plan fact for {', '.join(missing)}: run the hosttune_agent (or "
                                 f"hosttune_instances) role on them earlier in the same playbook, or leave them "
                                 f"out of the hosts given")
    return groups


class FilterModule:
    def filters(self):
        return {"prometheus_file_sd": prometheus_file_sd}
