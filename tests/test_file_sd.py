"""plugins/filter/prometheus.py (hosttune.tuning.prometheus_file_sd): the fleet's Prometheus
file_sd target groups from inventory variables and plans (real plans of synthetic 2-node hosts).
The whole path - role, real Prometheus, TLS, auth - is tests/test_prometheus_fleet.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from ansible.errors import AnsibleFilterError

from tests.conftest import REPO
from tests.treegen import Spec, write_tree

_spec = importlib.util.spec_from_file_location("prometheus_filters", os.path.join(REPO, "plugins", "filter", "prometheus.py"))
sd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sd)


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """Plans of a 2-node host with the instances bound to the wildcard, to ::, and to one address."""
    tmp = tmp_path_factory.mktemp("sd")
    root = write_tree(str(tmp / "host"), Spec())
    out = {}
    for bind in ("0.0.0.0", "::", "10.1.2.3", "127.0.0.1"):
        policy = tmp / "policy.yaml"
        policy.write_text(json.dumps({"policy": {"instances": {"bind": bind, "base_port": 9100}}}))
        proc = subprocess.run([sys.executable, "-m", "hosttune", "plan", "--root", root, "--policy", str(policy),
                               "--json"], capture_output=True, text=True, timeout=120, check=True)
        out[bind] = json.loads(proc.stdout)
    return out


def test_one_group_per_instance_with_host_and_node_labels(plans):
    hostvars = {"a": {"ansible_host": "192.0.2.10", "hosttune_plan": plans["0.0.0.0"]},
                "b": {"hosttune_plan": plans["10.1.2.3"]},
                "c": {"ansible_host": "2001:db8::5", "hosttune_plan": plans["::"]}}
    groups = sd.prometheus_file_sd(hostvars, ["a", "b", "c"], "instances")
    assert groups == [
        {"targets": [f"{addr}:{9100 + node}"], "labels": {"host": host, "node": str(node),
                                                          "inference_instance": f"node{node}"}}
        for host, addr in (("a", "192.0.2.10"), ("b", "10.1.2.3"), ("c", "[2001:db8::5]")) for node in (0, 1)]
    # adding a host to the inventory adds its targets
    hostvars["d"] = {"ansible_host": "192.0.2.11", "hosttune_plan": plans["0.0.0.0"]}
    assert len(sd.prometheus_file_sd(hostvars, ["a", "b", "c", "d"], "instances")) == len(groups) + 2


def test_agent_targets_follow_the_agent_options_or_its_defaults(plans):
    hostvars = {"a": {"ansible_host": "192.0.2.10", "hosttune_agent_options": {"listen": "0.0.0.0", "port": 9999}},
                "b": {"hosttune_agent_options": {"listen": "10.0.0.2"}}}
    assert sd.prometheus_file_sd(hostvars, ["a", "b"], "agent") == [
        {"targets": ["192.0.2.10:9999"], "labels": {"host": "a"}},
        {"targets": ["10.0.0.2:9477"], "labels": {"host": "b"}}]


def test_loopback_only_endpoints_and_hosts_without_a_plan_fail_naming_the_host(plans):
    # the agent's default listen is loopback: a central Prometheus would scrape itself under a's name
    with pytest.raises(AnsibleFilterError, match="^a: the agent listens on 127.0.0.1 only"):
        sd.prometheus_file_sd({"a": {}}, ["a"], "agent")
    with pytest.raises(AnsibleFilterError, match="^b: instance node0 listens on 127.0.0.1 only"):
        sd.prometheus_file_sd({"b": {"hosttune_plan": plans["127.0.0.1"]}}, ["b"], "instances")
    with pytest.raises(AnsibleFilterError, match="no hosttune_plan fact for x, y"):
        sd.prometheus_file_sd({"x": {}, "y": {"hosttune_plan": None}, "z": {"hosttune_plan": plans["::"]}},
                              ["x", "y", "z"], "instances")
    with pytest.raises(AnsibleFilterError, match="kind must be one of agent, instances"):
        sd.prometheus_file_sd({}, [], "nodes")


@pytest.mark.parametrize("hostvars, words", [
    ({"ansible_host": "10.0.0.1:9000"}, "'10.0.0.1:9000' is not a host name or IP address"),
    ({"ansible_host": "bad host\n- targets: [evil:1]"}, "is not a host name or IP address"),
    ({"ansible_host": "-leading.example"}, "is not a host name or IP address"),
    ({"ansible_host": "a" * 64 + ".example"}, "is not a host name or IP address"),
    ({"hosttune_agent_options": {"listen": "0.0.0.0", "port": 0}}, "port must be a number from 1 to 65535, got 0"),
    ({"hosttune_agent_options": {"listen": "0.0.0.0", "port": 70000}}, "got 70000"),
    ({"hosttune_agent_options": {"listen": "0.0.0.0", "port": "٩٠٠٠"}}, "port must be a number"),
    ({"hosttune_agent_options": {"listen": "0.0.0.0", "port": True}}, "port must be a number"),
    ({"hosttune_agent_options": {"listen": "0.0.0.0", "port": "9000/metrics"}}, "port must be a number"),
])
def test_a_target_is_a_checked_address_and_port(hostvars, words):
    """What becomes a target is a host name (RFC 1123) or an IP address and a port 1-65535, or an
    error naming the host: never a string Prometheus would refuse or read as something else."""
    vars_ = {"ansible_host": "192.0.2.1", "hosttune_agent_options": {"listen": "0.0.0.0"}, **hostvars}
    with pytest.raises(AnsibleFilterError) as err:
        sd.prometheus_file_sd({"h": vars_}, ["h"], "agent")
    assert str(err.value).startswith("h: the agent: ") and words in str(err.value)


def test_names_and_addresses_of_both_families_are_targets():
    hostvars = {"v6": {"ansible_host": "2001:db8::7", "hosttune_agent_options": {"listen": "::", "port": "9100"}},
                "dns": {"ansible_host": "node-1.rack2.example.", "hosttune_agent_options": {"listen": "0.0.0.0"}},
                "own": {"hosttune_agent_options": {"listen": "fe80::1"}}}
    assert [g["targets"] for g in sd.prometheus_file_sd(hostvars, ["v6", "dns", "own"], "agent")] == [
        ["[2001:db8::7]:9100"], ["node-1.rack2.example.:9477"], ["[fe80::1]:9477"]]
