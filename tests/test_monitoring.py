"""monitoring/: the alert rules and the example Prometheus config checked and unit-tested by
promtool (Debian's prometheus package, installed by scripts/bootstrap), the dashboard's queries
checked as PromQL, and every metric name they use checked against live expositions of a real
agent and a real `hosttune serve`."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests import promtext
from tests.conftest import REPO
from tests.treegen import Spec, write_tree

MONITORING = os.path.join(REPO, "monitoring")
RULES = os.path.join(MONITORING, "alerts.yml")
DASHBOARD = os.path.join(MONITORING, "grafana-dashboard.json")
# series Prometheus makes itself, not the code
PROMETHEUS_NAMES = {"up"}
# PromQL words that look like names
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}


def promtool(*args, cwd=MONITORING):
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/bootstrap installs Debian's prometheus package"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rule_exprs():
    with open(RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    return {rule["alert"]: rule for g in groups for rule in g["rules"]}


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    queries = [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs, queries


def grafana_to_promql(expr):
    """Grafana's variables replaced by what they stand for, so that promtool can parse the query."""
    expr = re.sub(r"label_values\((.*),\s*\w+\)$", r"\1", expr)  # a variable's query: label_values(SELECTOR, LABEL)
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$", "var_")


def metric_names(expr):
    expr = grafana_to_promql(expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[m.end():].lstrip().startswith("(") or m.group() in KEYWORDS:
            continue  # a function or an aggregation
        names.add(m.group())
    return names


def test_promtool_checks_and_unit_tests_the_rules_and_the_example_config():
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0 and "SUCCESS: 13 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", "alerts_test.yml", cwd=os.path.join(MONITORING, "tests"))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # every alert has a unit test that makes it fire
    with open(os.path.join(MONITORING, "tests", "alerts_test.yml")) as f:
        tests = yaml.safe_load(f)["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert fired == set(rule_exprs())


def test_alerts_cover_the_agent_and_the_instances_with_severity_and_text():
    rules = rule_exprs()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    used = {name: metric_names(rule["expr"]) for name, rule in rules.items()}
    wanted = {"hosttune_drift_events_total": "drift events", "hosttune_checks_total": "repair failures",
              "hosttune_reboot_pending": "reboot pending", "up": "agent / instance down",
              "ovms_requests_fail": "error rate", "ovms_request_time_us_bucket": "p99 latency",
              "ovms_infer_req_queue_size": "queue saturation", "ovms_streams": "streams saturation"}
    missing = [what for metric, what in wanted.items() if not any(metric in names for names in used.values())]
    assert not missing, missing


def test_dashboard_queries_are_promql(tmp_path):
    exprs, queries = dashboard_exprs()
    assert len(exprs) >= 15 and queries

    def check(expressions):
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(expressions)]}]}
        path = tmp_path / "dashboard_rules.yml"
        path.write_text(yaml.safe_dump(rules))
        return promtool("check", "rules", str(path))

    r = check(exprs + queries)
    assert r.returncode == 0, r.stdout + r.stderr
    assert check(["sum by (instance (rate(x[5m]))"]).returncode != 0  # the check does reject bad PromQL


def _read_until(proc, pattern, timeout=180):  # generous: the machine may be loaded
    """The first line of the agent's stdout matching `pattern`. Reads the raw pipe (os.read) and
    splits lines itself: select() on a buffered text pipe misses lines already buffered."""
    deadline, buffer, seen = time.monotonic() + timeout, getattr(proc, "_hosttune_rest", b""), []
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode(errors="replace")
            seen.append(line + "\n")
            m = re.search(pattern, line)
            if m:
                proc._hosttune_rest = buffer  # lines after the match belong to the next wait
                return m
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
        elif proc.poll() is not None:
            break
    raise AssertionError(f"no {pattern!r} from the agent:\n{''.join(seen)}{proc.stderr.read() if proc.poll() is not None else ''}")


def live_agent_exposition(tmp_path):
    import urllib.request

    root = write_tree(str(tmp_path / "host"), Spec())
    os.makedirs(os.path.join(root, "etc", "hosttune"), exist_ok=True)
    with open(os.path.join(root, "etc", "hosttune", "hosttune.yaml"), "w") as f:
        f.write("agent: {port: 0, reapply: false, interval: 60}\n")
    proc = subprocess.Popen([sys.executable, "-m", "hosttune", "agent", "--root", root, "--foreground"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(_read_until(proc, r'"event":\s*"listening".*"port":\s*(\d+)').group(1))
        _read_until(proc, r'"event":\s*"ready"')  # after the first full check: every series is set
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
            return resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def live_serve_exposition(tmp_path):
    import http.client

    from hosttune.instance_settings import METRICS_LIST
    from hosttune.model import repo as model_repo
    from tests.serverproc import Server

    model_repo.sample(str(tmp_path / "models"), variant="trivial", int8=False)
    srv = Server("--repo", str(tmp_path / "models"), "--metrics_enable", "--metrics_list",
                 ",".join(METRICS_LIST), timeout=180)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", "/v2/models/nope")  # a rejection, so that every family has a sample
        conn.getresponse().read()
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        srv.stop()


def test_every_metric_in_the_rules_and_dashboard_is_exposed_by_the_code(tmp_path):
    pytest.importorskip("openvino")
    exposed = set(PROMETHEUS_NAMES)
    for text in (live_agent_exposition(tmp_path), live_serve_exposition(tmp_path)):
        for fam in promtext.parse(text).values():
            exposed |= {s for s, _, _ in fam.samples}  # what PromQL selects: sample names
    exprs, queries = dashboard_exprs()
    used = {}
    for where, expr in [*((f"alert {n}", r["expr"]) for n, r in rule_exprs().items()),
                        *((f"dashboard query {i}", e) for i, e in enumerate(exprs + queries))]:
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    assert {"hosttune_drift_events_total", "ovms_request_time_us_bucket", "process_cpu_seconds_total",
            "hosttune_requests_rejected_total"} <= set(used)  # the extraction finds names at all
    unknown = {name: wheres for name, wheres in used.items() if name not in exposed}
    assert not unknown, f"metric names no code exposes: {unknown}"
