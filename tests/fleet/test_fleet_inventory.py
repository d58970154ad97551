"""Fleet without SSH: reading the inventory (ansible-core), policy errors, `fleet plan` from captures,
the report and the bench collector."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import pytest

from hosttune.errors import HosttuneError
from hosttune.fleet import bench, inventory, report
from hosttune.fleet.runner import HostResult
from tests.fleet.conftest import REPO, capture_tree, write_inventory
from tests.treegen import Spec, write_tree


def fleet(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hosttune", "fleet", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_hosts_vars_templating_and_defaults(tmp_path):
    inv = write_inventory(tmp_path / "inv", {
        "web1": {"ansible_host": "{{ '127.0.0.' ~ 1 }}", "ansible_port": "{{ 2200 + 2 }}",
                 "hosttune_root": "/srv/capture.tar.gz"},
        "web2": {},
    }, all_vars={"ansible_user": "deploy", "ansible_ssh_private_key_file": "~/.ssh/fleet"},
        group_vars={"fleet": {"hosttune_command": "sudo -n /opt/hosttune/bin/hosttune",
                              "hosttune_policy": {"profile": "throughput"}}})
    hosts = inventory.load([inv])
    assert [h.name for h in hosts] == ["web1", "web2"]
    web1, web2 = hosts
    assert (web1.address, web1.port, web1.user) == ("127.0.0.1", 2202, "deploy")
    assert type(web1.address) is str and type(web1.port) is int  # plain types, not ansible's tagged ones
    assert web1.key_file == os.path.expanduser("~/.ssh/fleet")
    assert web1.root == "/srv/capture.tar.gz" and web2.root == "/"
    assert web2.address == "web2" and web2.port is None
    assert web1.command == "sudo -n /opt/hosttune/bin/hosttune"
    assert web1.policy["profile"] == "throughput" and web1.policy_error is None
    assert re.search(r"group_vars/fleet.yml:\d+$", web1.policy_source)
    assert web1.groups == ["all", "fleet"]


def test_defaults_without_vars(tmp_path):
    inv = write_inventory(tmp_path / "inv", {"solo": {}})
    (h,) = inventory.load([inv])
    assert (h.command, h.root, h.policy_raw, h.policy) == ("hosttune", "/", None, None)


def test_limit_pattern(tmp_path):
    inv = write_inventory(tmp_path / "inv", {"a1": {}, "a2": {}, "b1": {}},
                          groups={"alpha": ["a1", "a2"], "beta": ["b1"]})
    assert [h.name for h in inventory.load([inv], "alpha")] == ["a1", "a2"]
    assert [h.name for h in inventory.load([inv], "alpha:!a2")] == ["a1"]
    with pytest.raises(HosttuneError, match="no hosts match --limit 'nothing'"):
        inventory.load([inv], "nothing")


def test_group_vars_policy_error_names_file_line_and_field(tmp_path):
    inv = write_inventory(tmp_path / "inv", {"g1": {}, "g2": {}, "ok1": {}},
                          groups={"gpu": ["g1", "g2"], "cpu": ["ok1"]},
                          group_vars={"gpu": "hosttune_policy:\n  profile: latency\n  cpufreq:\n    turbo: sideways\n",
                                      "cpu": "hosttune_policy:\n  profile: throughput\n  thp: madvise\n"})
    hosts = {h.name: h for h in inventory.load([inv])}
    assert hosts["ok1"].policy_error is None
    msg = str(hosts["g1"].policy_error)
    assert "group_vars/gpu.yml:4" in msg and "hosttune_policy.cpufreq.turbo" in msg and "sideways" in msg
    summary = inventory.policy_errors(list(hosts.values()))
    assert summary.count("group_vars/gpu.yml") == 1 and "hosts: g1, g2" in summary


def test_unknown_policy_key_is_named(tmp_path):
    inv = write_inventory(tmp_path / "inv", {"h": {}},
                          group_vars={"all": "hosttune_policy:\n  isolation:\n    enabled: true\n    cpu: 1-3\n"})
    (h,) = inventory.load([inv])
    assert "group_vars/all.yml:4" in str(h.policy_error)
    assert "hosttune_policy.isolation.cpu: unknown key" in str(h.policy_error)


def test_every_policy_mistake_is_named_where_it_is(tmp_path):
    inv = write_inventory(tmp_path / "inv", {"h": {}},
                          group_vars={"all": "hosttune_policy:\n  thp: sometimes\n  isolation:\n    cpu: 1-3\n"})
    (h,) = inventory.load([inv])
    lines = str(h.policy_error).splitlines()
    assert len(lines) == 2, lines
    thp, cpu = (next(line for line in lines if field in line) for field in ("hosttune_policy.thp:", ".isolation.cpu:"))
    assert "group_vars/all.yml:2: hosttune_policy.thp: must be one of" in thp, thp
    assert "group_vars/all.yml:4: hosttune_policy.isolation.cpu: unknown key" in cpu, cpu
    summary = inventory.policy_errors([h]).splitlines()
    assert summary[0] == "invalid hosttune_policy in the inventory: " and len(summary) == 3, summary
    assert all(line.startswith("  ") and line.endswith("(hosts: h)") for line in summary[1:]), summary


def test_fleet_verify_refuses_bad_policy_with_exit_2(tmp_path):
    inv = write_inventory(tmp_path / "inv", {"h1": {"ansible_host": "127.0.0.1", "ansible_port": 1}},
                          group_vars={"fleet": {"hosttune_policy": {"thp": "sometimes"}}})
    proc = fleet("verify", "-i", inv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hosttune: error: invalid hosttune_policy")
    assert "group_vars/fleet.yml:2" in err[0] and "hosttune_policy.thp" in err[0] and "(hosts: h1)" in err[0]
    assert "fleet verify:" not in proc.stderr  # refused before touching any host


def test_bad_inventory_exit_2(tmp_path):
    bad = tmp_path / "broken.yml"
    bad.write_text("all:\n  hosts:\n    h1: [\n")
    proc = fleet("verify", "-i", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"hosttune: error: {bad}: cannot parse inventory (yaml")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = fleet("capture", "-i", str(tmp_path / "nope.yml"))
    assert proc.returncode == 2 and "no such inventory file" in proc.stderr
    proc = fleet("verify", "-i", str(bad), "--forks", "0")
    assert proc.returncode == 2 and "--forks" in proc.stderr


def test_broken_group_vars_yaml_exit_2(tmp_path):
    inv = write_inventory(tmp_path / "inv", {"h1": {}}, group_vars={"fleet": "hosttune_policy: [\n"})
    proc = fleet("verify", "-i", inv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "group_vars/fleet.yml" in proc.stderr


def test_fleet_plan_from_captures(tmp_path):
    caps = tmp_path / "caps"
    caps.mkdir()
    write_tree(str(tmp_path / "t1"), Spec(hostname="one"))
    write_tree(str(tmp_path / "t2"), Spec(hostname="two", sockets=4, cores_per_node=2))
    capture_tree(str(tmp_path / "t1"), str(caps / "n1.tar.gz"))
    capture_tree(str(tmp_path / "t2"), str(caps / "n2.tar.gz"))
    capture_tree(str(tmp_path / "t2"), str(caps / "bad1.tar.gz"))
    # the hosts are never contacted: their addresses do not exist
    inv = write_inventory(tmp_path / "inv", {
        "n1": {"ansible_host": "192.0.2.1"}, "n2": {"ansible_host": "192.0.2.2"},
        "bad1": {}, "nocap": {},
    }, groups={"good": ["n1", "n2", "nocap"], "bad": ["bad1"]},
        group_vars={"good": {"hosttune_policy": {"profile": "throughput"}},
                    "bad": "hosttune_policy:\n  housekeeping:\n    cores_per_node: many\n"})
    out = tmp_path / "report"
    proc = fleet("plan", "-i", inv, "--captures", str(caps), "--json", "--report", str(out))
    assert proc.returncode == 2, proc.stderr  # a policy error is bad input
    rep = json.loads(proc.stdout)
    hosts = {h["host"]: h for h in rep["hosts"]}
    assert hosts["n1"]["status"] == "ok" and hosts["n1"]["result"]["schema"] == "hosttune.plan/1"
    assert hosts["n1"]["result"]["hostname"] == "one" and hosts["n1"]["result"]["profile"] == "throughput"
    assert len(hosts["n2"]["result"]["nodes"]) == 4
    assert hosts["bad1"]["status"] == "invalid"
    assert "group_vars/bad.yml:3" in hosts["bad1"]["reason"]
    assert "hosttune_policy.housekeeping.cores_per_node" in hosts["bad1"]["reason"]
    assert hosts["nocap"]["status"] == "failed" and "no capture" in hosts["nocap"]["reason"]
    assert rep["counts"]["ok"] == 2 and rep["exit_code"] == 2
    assert json.loads((out / "report.json").read_text()) == rep
    assert json.loads((out / "plans" / "n1.json").read_text())["hostname"] == "one"
    # the table names the field too
    table = fleet("plan", "-i", inv, "--captures", str(caps), "-q")
    assert "hosttune_policy.housekeeping.cores_per_node" in table.stdout and table.stderr == ""


def _result(status, **kw):
    h = inventory.FleetHost(name=f"h-{status}", address="127.0.0.1")
    return HostResult(h, status, **kw)


@pytest.mark.parametrize("statuses, interrupted, code", [
    (["ok", "ok"], False, 0),
    (["ok", "pending-reboot"], False, 3),
    (["ok", "pending-reboot", "drift"], False, 1),
    (["ok", "unreachable"], False, 1),
    (["ok", "failed"], False, 1),
    (["failed", "invalid"], False, 2),
    (["ok", "cancelled"], True, 130),
])
def test_exit_codes(statuses, interrupted, code):
    assert report.exit_code([_result(s) for s in statuses], interrupted) == code


# the shape of hosttune.bench/1 (hosttune/bench/runner.py build_document), trimmed
BENCH_DOC = {
    "schema": "hosttune.bench/1", "kind": "inprocess", "verdict": "unsure",
    "instances": [
        {"name": "node0", "throughput": 812.5, "p99_ms": 4.25, "verdict": "stable",
         "runs": [{"throughput": 812.5, "latency_ms": {"p99": 4.25}}]},
        {"name": "node1", "throughput": 790.0, "p99_ms": 5.5, "verdict": "unsure", "runs": []},
    ],
    "aggregate": {"throughput": {"mean": 1602.5}, "p99_ms": {"mean": 5.0}, "verdict": "unsure"},
}


def test_bench_collector():
    s = bench.summarize(BENCH_DOC)
    assert s["instances"] == [
        {"name": "node0", "throughput": 812.5, "p99_ms": 4.25, "verdict": "stable"},
        {"name": "node1", "throughput": 790.0, "p99_ms": 5.5, "verdict": "unsure"},
    ]
    assert (s["verdict"], s["throughput"], s["p99_ms"]) == ("unsure", 1602.5, 5.0)
    assert bench.verdict_text(s) == "verdict unsure (node0 stable, node1 unsure)"
    assert "node0 812.5/s p99 4.25ms stable" in bench.describe(s)
    # other spellings the collector accepts (keep it easy to follow a schema change)
    flat = bench.summarize({"throughput": 10, "latency_ms": {"p99": 1}})
    assert flat["instances"][0]["throughput"] == 10.0 and flat["instances"][0]["p99_ms"] == 1.0


def test_html_report_is_self_contained():
    r = _result("ok", detail={"bench": bench.summarize(BENCH_DOC)}, result=BENCH_DOC)
    rep = report.build("bench", [r, _result("unreachable", reason="cannot connect <x>")], False,
                       inventory=["inv.yml"], limit=None, started=0, elapsed_s=1.0, forks=5,
                       connect_timeout=10, timeout=60)
    page = report.render_html(rep)
    assert page.count("<svg") == 2 and "h-ok node0" in page and "812.50" in page and "4.25 ms" in page
    assert "cannot connect &lt;x&gt;" in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
