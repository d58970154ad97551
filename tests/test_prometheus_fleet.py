"""A central Prometheus scrapes the fleet: Debian's /usr/bin/prometheus, scraping every 1 s over TLS
with basic auth, real local processes - two hosts' agents (synthetic 2-node trees as their roots)
and host A's two `hosttune serve` instances (its plan's node0 and node1) - found through the
file_sd files that the hosttune_monitoring role writes from a two-host inventory and the plans.
Checked through Prometheus's HTTP API: every target up with its host and node labels; a wrong
password is 401 at the endpoint and a target Prometheus shows down."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from hosttune.model import repo as model_repo
from tests.serverproc import Server, free_port
from tests.test_agent import AgentProcess
from tests.test_ansible import play
from tests.tlsutil import web_config
from tests.treegen import Spec, write_tree

PROMETHEUS = "/usr/bin/prometheus"
DEADLINE = 90.0  # seconds any wait may take on a loaded machine; each returns as soon as it holds
USER, PASSWORD = "prom", "s3cret-pw"


def free_run(count: int) -> int:
    """A port p with p..p+count-1 all free (the plan numbers its instances' ports up from a base)."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no run of free ports")


def wait_for(check, what: str, timeout: float = DEADLINE, step: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(step)
    raise AssertionError(f"{what} within {timeout}s; last: {last!r}")


def api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def host_config(root: str, policy: dict, agent_port: int, web: str) -> str:
    path = os.path.join(root, "etc", "hosttune", "hosttune.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump({"policy": policy, "agent": {"interval": 30, "fast_check_interval": 0, "listen": "0.0.0.0",
                                                     "port": agent_port, "web_config_file": web}}, f)
    return path


def plan_of(root: str, config: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "hosttune", "plan", "--root", root, "--policy", config, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def processes():
    started: list = []
    yield started
    for proc in reversed(started):
        if isinstance(proc, AgentProcess):
            proc.kill()
        elif isinstance(proc, Server):
            proc.stop()
        else:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_prometheus_scrapes_agents_and_node_instances_over_tls_with_auth_from_file_sd(tmp_path, processes):
    assert os.access(PROMETHEUS, os.X_OK), "prometheus is missing: scripts/bootstrap installs Debian's package"
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    web = web_config(str(web_dir), {USER: PASSWORD})
    ca = str(web_dir / "server.crt")
    model_repo.sample(str(tmp_path / "models"), variant="tiny", int8=False)

    # -- two hosts: A runs its agent and one instance per NUMA node (its plan's), B its agent only
    hosts: dict[str, dict] = {}
    for name, instances in (("host-a", True), ("host-b", False)):
        root = write_tree(str(tmp_path / name), Spec())
        base, grpc_base = free_run(2), free_run(2)
        policy = {"profile": "latency", "instances": {"enabled": instances, "bind": "0.0.0.0", "base_port": base,
                                                      "grpc_base_port": grpc_base}}
        config = host_config(root, policy, free_port(), web)
        plan = plan_of(root, config)
        plan_file = tmp_path / f"{name}-plan.json"
        plan_file.write_text(json.dumps(plan))
        hosts[name] = {"root": root, "config": config, "plan": plan, "plan_file": str(plan_file),
                       "agent_port": yaml.safe_load(open(config))["agent"]["port"]}
    assert [i["node"] for i in hosts["host-a"]["plan"]["instances"]] == [0, 1]
    assert hosts["host-b"]["plan"]["instances"] == []

    for name, h in hosts.items():
        agent = AgentProcess(h["root"], "--config", h["config"])
        processes.append(agent)
        h["agent"] = agent
    instances = {}
    for inst in hosts["host-a"]["plan"]["instances"]:
        srv = Server("--plan", hosts["host-a"]["plan_file"], "--plan-instance", inst["name"], "--no-pin",
                     "--repo", str(tmp_path / "models"), "--model", "tiny", "--rest_port", str(inst["port"]),
                     "--metrics_enable", "--web-config-file", web)
        processes.append(srv)
        assert srv.port == inst["port"] and "https://" in srv.banner
        instances[inst["node"]] = srv
    for name, h in hosts.items():
        assert h["agent"].wait("listening")["port"] == h["agent_port"]

    # -- the file_sd files, written by the hosttune_monitoring role from a two-host inventory
    sd_dir = tmp_path / "sd"
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        "hosttune": {"hosts": {name: {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_host": "127.0.0.1",
            "hosttune_agent_options": {"listen": "0.0.0.0", "port": h["agent_port"]},
            "hosttune_plan": h["plan"]} for name, h in hosts.items()}},
        "monitoring": {"hosts": {"localhost": {"ansible_connection": "local",
                                               "ansible_python_interpreter": sys.executable}}},
    }}}))
    book = tmp_path / "sd.yml"
    book.write_text(yaml.safe_dump([{"name": "file_sd", "hosts": "monitoring", "gather_facts": False,
                                     "roles": ["hosttune.tuning.hosttune_monitoring"]}]))
    run = play(tmp_path, str(book), {"hosttune_monitoring_file_sd_dir": str(sd_dir),
                                     "hosttune_monitoring_sd_group": "hosttune",
                                     "hosttune_monitoring_owner": str(os.getuid()),
                                     "hosttune_monitoring_group": str(os.getgid())}, inventory=str(inventory))
    assert run.rc == 0, run.stdout[-3000:]
    agent_sd = json.loads((sd_dir / "hosttune-agent.json").read_text())
    instances_sd = json.loads((sd_dir / "hosttune-instances.json").read_text())
    assert sorted(g["labels"]["host"] for g in agent_sd) == ["host-a", "host-b"]
    assert sorted((g["labels"]["host"], g["labels"]["node"]) for g in instances_sd) == [("host-a", "0"),
                                                                                            ("host-a", "1")]

    # -- Prometheus: the same targets with the right password, and once more with a wrong one
    def job(name: str, sd_file: str, password: str) -> dict:
        return {"job_name": name, "scheme": "https", "tls_config": {"ca_file": ca},
                "basic_auth": {"username": USER, "password": password},
                "file_sd_configs": [{"files": [str(sd_dir / sd_file)], "refresh_interval": "1s"}]}

    prom_port = free_port()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [job("hosttune-agent", "hosttune-agent.json", PASSWORD),
                           job("hosttune-instances", "hosttune-instances.json", PASSWORD),
                           job("wrong-password", "hosttune-instances.json", "not-" + PASSWORD)]}))
    check = subprocess.run(["promtool", "check", "config", str(prom_config)], capture_output=True, text=True,
                           timeout=60) if shutil.which("promtool") else None
    assert check is None or check.returncode == 0, check.stdout + check.stderr
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    processes.append(prom)

    def scraped() -> list[dict] | None:
        targets = api(prom_port, "/api/v1/targets", state="active")["activeTargets"]
        done = len(targets) == 6 and all(t["lastScrape"] != "0001-01-01T00:00:00Z" and t["health"] != "unknown"
                                         for t in targets)
        return targets if done else None

    targets = wait_for(scraped, "Prometheus scraping all 6 targets")
    by_job: dict[str, list[dict]] = {}
    for t in targets:
        by_job.setdefault(t["labels"]["job"], []).append(t)
    for name in ("hosttune-agent", "hosttune-instances"):
        assert all(t["health"] == "up" for t in by_job[name]), [(t["scrapeUrl"], t["lastError"]) for t in by_job[name]]
    assert sorted(t["labels"]["host"] for t in by_job["hosttune-agent"]) == ["host-a", "host-b"]
    assert sorted((t["labels"]["host"], t["labels"]["node"], t["scrapeUrl"]) for t in by_job["hosttune-instances"]) == [
        ("host-a", str(node), f"https://127.0.0.1:{srv.port}/metrics") for node, srv in sorted(instances.items())]
    agent_urls = {t["labels"]["host"]: t["scrapeUrl"] for t in by_job["hosttune-agent"]}
    assert agent_urls == {name: f"https://127.0.0.1:{h['agent_port']}/metrics" for name, h in hosts.items()}
    assert all(t["health"] == "down" and "401" in t["lastError"] for t in by_job["wrong-password"]), by_job["wrong-password"]

    # the series carry the labels: up per (host, node); each agent's own metrics under its host
    up = api(prom_port, "/api/v1/query", query='up{job="hosttune-instances"}')["result"]
    assert sorted((r["metric"]["host"], r["metric"]["node"], r["value"][1]) for r in up) == [
        ("host-a", "0", "1"), ("host-a", "1", "1")]
    agent_up = api(prom_port, "/api/v1/query", query='up{job="hosttune-agent"} == 1')["result"]
    assert sorted(r["metric"]["host"] for r in agent_up) == ["host-a", "host-b"]
    served = wait_for(lambda: api(prom_port, "/api/v1/query",
                                  query='count by (host, node) ({job="hosttune-instances", __name__=~"ovms_.+"})')["result"],
                      "OVMS series from the instances")
    assert sorted((r["metric"]["host"], r["metric"]["node"]) for r in served) == [("host-a", "0"), ("host-a", "1")]

    # -- the endpoints themselves: 401 with a challenge for a wrong password or none
    ctx = ssl.create_default_context(cafile=ca)
    for url in [f"https://127.0.0.1:{h['agent_port']}/metrics" for h in hosts.values()] + [
            f"https://127.0.0.1:{srv.port}/metrics" for srv in instances.values()]:
        for password in ("wrong", None):
            headers = {} if password is None else {
                "Authorization": "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()}
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10, context=ctx)
            assert err.value.code == 401 and err.value.headers["WWW-Authenticate"].startswith("Basic "), url
