"""`hosttune agent`: real agent processes on a writable copy of this machine's capture.

Each test starts `python -m hosttune agent` (which re-executes as `python -m hosttune.agent`) as
a subprocess and talks to it as systemd, Prometheus or an operator would: files in its root,
signals, its HTTP endpoints, its JSON log lines, a NOTIFY_SOCKET.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request

import pytest

from hosttune import state
from hosttune.sysfs import HostFS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(REPO, "hosttune", "data", "hosttune-agent.service")
INTERVAL = 1.0
# how long a test waits for an event before failing: generous, because tests return as soon as the
# event comes, and the machine may be loaded (QEMU guests beside the unit tests)
DEADLINE = 60.0
CONFIG = f"""\
policy:
  profile: latency
agent:
  interval: {INTERVAL}
  port: 0
  fast_check_interval: 0.25
"""


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    out = tmp_path_factory.mktemp("capture") / "host.tar.gz"
    proc = subprocess.run([sys.executable, "-m", "hosttune", "capture", "-o", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return str(out)


@pytest.fixture
def root(capture, tmp_path):
    dest = tmp_path / "root"
    dest.mkdir()
    with tarfile.open(capture) as archive:
        archive.extractall(dest, filter="data")
    (dest / "etc" / "default").mkdir(parents=True, exist_ok=True)
    (dest / "etc" / "default" / "grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    write_config(str(dest), CONFIG)
    return str(dest)


def write_config(root: str, text: str) -> str:
    path = os.path.join(root, "etc", "hosttune", "hosttune.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)
    return path


def plan_of(root: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "hosttune", "plan", "--root", root, "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def pinned_irqs(root: str) -> list[int]:
    irqs = plan_of(root)["settings"]["irqs"]
    return [p["irq"] for p in irqs.get("pin", [])] if irqs["status"] == "planned" else []


def read(root: str, path: str) -> str:
    with open(os.path.join(root, path.lstrip("/"))) as handle:
        return handle.read().strip()


def write(root: str, path: str, value: str) -> None:
    with open(os.path.join(root, path.lstrip("/")), "w") as handle:
        handle.write(value + "\n")


def wait_for(predicate, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped
    except FileNotFoundError:
        return False


class AgentProcess:
    """A running agent; its JSON log lines are collected as they come."""

    def __init__(self, root: str, *args: str, foreground: bool = True, env: dict | None = None,
                 journal: bool = False):
        argv = [sys.executable, "-m", "hosttune", "agent", "--root", root, *args]
        if foreground:
            argv.append("--foreground")
        env = dict(os.environ if env is None else env)
        env.pop("JOURNAL_STREAM", None)
        stdout = subprocess.PIPE
        if journal:  # stdout is "the journal": JOURNAL_STREAM names its pipe, as systemd does
            read_end, stdout = os.pipe()
            st = os.fstat(stdout)
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        # its own process group, which stands in for the unit's cgroup: the agent forks a child
        # for each check, and systemd kills the whole cgroup, not just the main process
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        self.stdout = self.proc.stdout
        if journal:
            os.close(stdout)
            self.stdout = os.fdopen(read_end, "r")
        self.events: list[dict] = []
        self.other: list[str] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(self.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()

    def _read(self, stream, is_stdout):
        for line in stream:
            with self.cond:
                if not is_stdout:
                    self.stderr.append(line)
                else:
                    prefix = re.match(r"<([0-7])>", line)  # sd-daemon(3) priority, kept as "priority"
                    try:
                        rec = json.loads(line[prefix.end():] if prefix else line)
                        if prefix:
                            rec["priority"] = int(prefix.group(1))
                        self.events.append(rec)
                    except json.JSONDecodeError:
                        self.other.append(line)
                self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait(self, event: str, timeout: float = DEADLINE, after: int = 0, **fields) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for rec in self.events[after:]:
                    if rec["event"] == event and all(rec.get(k) == v for k, v in fields.items()):
                        return rec
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reading()):
                    raise AssertionError(f"no {event} {fields} event in {timeout}s; exit {self.proc.poll()}\n"
                                         + self.dump())
                self.cond.wait(min(left, 0.2))

    def _reading(self) -> bool:
        return self.stdout is not None and not self.stdout.closed and self.proc.poll() is None

    def dump(self) -> str:
        return "\n".join(json.dumps(e) for e in self.events[-40:]) + "\n" + "".join(self.other + self.stderr)

    def ready(self) -> AgentProcess:
        self.wait("ready")
        return self

    @property
    def port(self) -> int:
        return self.wait("listening")["port"]

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            return resp.read().decode()

    def status(self) -> dict:
        return json.loads(self.get("/status"))

    def metrics(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        samples = {}
        for family in text_string_to_metric_families(self.get("/metrics")):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the agent and its check process, as systemd does to a unit's cgroup."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


@pytest.fixture
def agents():
    started: list[AgentProcess] = []

    def start(root, *args, **kw) -> AgentProcess:
        agent = AgentProcess(root, *args, **kw)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()


def metric(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


# -- applying, drift, metrics -----------------------------------------------------------------------
def test_applies_at_start_and_puts_back_drift_within_an_interval(root, agents):
    irqs = pinned_irqs(root)
    assert irqs, "this machine's capture has no movable IRQ to pin"
    irq_path = f"/proc/irq/{irqs[0]}/smp_affinity_list"
    agent = agents(root).ready()

    verify = subprocess.run([sys.executable, "-m", "hosttune", "verify", "--root", root, "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    rows = json.loads(verify.stdout)["settings"]
    assert [r for r in rows if r["status"] == "drift" and r["area"] != "kernel_args"] == []
    assert read(root, "/proc/sys/vm/swappiness") == "10"
    pinned = read(root, irq_path)
    assert not os.path.exists(os.path.join(root, "etc/default/grub.d/hosttune.cfg")), "kernel_args is not staged"
    before = agent.metrics()
    assert metric(before, "hosttune_drift_events_total", area="irqs") == 0

    mark = agent.mark()
    write(root, irq_path, "0-1023")
    write(root, "/proc/sys/vm/swappiness", "60")
    # how soon it repairs is a figure for benchmarks/ and the Molecule scenarios, not for this test
    wait_for(lambda: read(root, irq_path) == pinned and read(root, "/proc/sys/vm/swappiness") == "10",
             DEADLINE, "the agent to put both values back")

    drift = agent.wait("drift", after=mark, area="irqs")
    assert drift["events"] == 1 and drift["level"] == "warning"
    agent.wait("reapplied", after=mark, area="irqs", count=1)
    after = agent.metrics()
    assert metric(after, "hosttune_drift_events_total", area="irqs") == 1
    assert metric(after, "hosttune_drift_events_total", area="sysctls") == 1
    assert metric(after, "hosttune_drift_events_total", area="thp") == 0
    assert metric(after, "hosttune_setting_ok", area="irqs") == 1
    assert metric(after, "hosttune_reapplied_total", area="irqs") == metric(before, "hosttune_reapplied_total",
                                                                               area="irqs") + 1
    assert agent.stop() == 0
    assert agent.events[-1]["event"] == "stopped"


class ReadyInstance:
    """Stands in for an inference instance: GET /v2/health/ready -> 200."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200 if self.path == "/v2/health/ready" else 404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_status_metrics_loopback_only_and_footprint(root, agents):
    instance = ReadyInstance()
    write_config(root, CONFIG.replace("profile: latency", f"profile: latency\n  instances: {{base_port: {instance.port}}}"))
    try:
        _status_metrics_loopback_only_and_footprint(root, agents, instance)
    finally:
        instance.close()


def _status_metrics_loopback_only_and_footprint(root, agents, instance):
    agent = agents(root).ready()
    status = agent.status()
    assert status["schema"] == "hosttune.agent-status/1"
    assert status["state"] == "running" and status["pid"] == agent.pid
    assert status["config"]["agent"]["interval"] == INTERVAL
    assert status["counts"]["ok"] > 0 and status["last_check"]["result"] in ("ok", "drift", "repaired")
    assert status["reboot_required"] is True  # the capture's kernel lacks the planned isolation arguments
    assert status["process"]["heavy_modules"] == []
    planned = plan_of(root)["instances"]
    assert [i["name"] for i in status["instances"]] == [i["name"] for i in planned]
    assert planned[0]["port"] == instance.port and status["instances"][0]["ready"] is True
    assert [i["url"] for i in status["instances"]] == [i["probe_url"] + "/v2/health/ready" for i in planned]

    samples = agent.metrics()  # parsed by prometheus_client's own parser
    names = {name for name, _ in samples}
    for name in ("hosttune_setting_ok", "hosttune_settings", "hosttune_drift_events_total", "hosttune_reboot_pending",
                 "hosttune_last_check_timestamp_seconds", "hosttune_check_duration_seconds",
                 "hosttune_checks_total", "hosttune_instance_ready", "hosttune_reapplied_total"):
        assert name in names, name
    assert metric(samples, "hosttune_reboot_pending") == 1
    assert metric(samples, "hosttune_instance_ready", inference_instance=planned[0]["name"]) == 1
    if len(planned) > 1:  # nothing listens on the next ports
        assert metric(samples, "hosttune_instance_ready", inference_instance=planned[1]["name"]) == 0
    assert abs(metric(samples, "hosttune_last_check_timestamp_seconds") - time.time()) < 30
    assert "hosttune_bench_stable" not in names  # no verdict file yet

    # the agent process: the (exec'd) lean interpreter, nothing heavy mapped, within 25 MB
    with open(f"/proc/{agent.pid}/cmdline", "rb") as handle:
        assert b"hosttune.agent" in handle.read()
    with open(f"/proc/{agent.pid}/maps") as handle:
        maps = handle.read()
    assert "libopenvino" not in maps and "libssl" not in maps
    with open(f"/proc/{agent.pid}/status") as handle:
        rss_kb = int(handle.read().split("VmRSS:")[1].split()[0])
    assert rss_kb <= 25 * 1024, f"agent RSS {rss_kb} kB"

    # listening on loopback only
    import psutil

    listening = [c for c in psutil.Process(agent.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", agent.port)]

    # the bench verdict, once the bench command has written one
    bench = os.path.join(root, "var/lib/hosttune/bench")
    os.makedirs(bench, exist_ok=True)
    with open(os.path.join(bench, "last.json"), "w") as handle:
        json.dump({"verdict": "unstable", "cv": 0.12}, handle)
    wait_for(lambda: metric(agent.metrics(), "hosttune_bench_stable") == 0, DEADLINE, "the bench verdict")
    assert agent.status()["bench"]["verdict"] == "unstable"
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_a_wildcard_bind_is_probed_where_the_plan_says(root, agents):
    instance = ReadyInstance()  # on 127.0.0.1, which is where the plan probes a 0.0.0.0 bind
    try:
        write_config(root, CONFIG.replace("profile: latency", "profile: latency\n  instances: "
                                          f"{{base_port: {instance.port}, bind: 0.0.0.0}}"))
        planned = plan_of(root)["instances"][0]
        assert planned["bind"] == "0.0.0.0"
        status = agents(root).ready().status()
        assert status["instances"][0]["url"] == planned["probe_url"] + "/v2/health/ready"
        assert status["instances"][0]["ready"] is True, status["instances"][0]
    finally:
        instance.close()


def test_new_irq_is_pinned_by_the_fast_check(root, agents):
    write_config(root, CONFIG.replace(f"interval: {INTERVAL}", "interval: 300"))  # only the fast check can see it
    agent = agents(root).ready()
    assert pinned_irqs(root)
    new = os.path.join(root, "proc/irq/999")
    os.makedirs(new)
    write(root, "/proc/irq/999/node", "0")
    write(root, "/proc/irq/999/smp_affinity_list", "0-1023")
    event = agent.wait("topology_changed", kind="irqs")
    assert event["added"] == ["999"]
    expected = plan_of(root)["settings"]["irqs"]["default_affinity"]
    from hosttune import cpulist

    wait_for(lambda: read(root, "/proc/irq/999/smp_affinity_list") == cpulist.format(expected), DEADLINE,
             "the new IRQ to be pinned")
    samples = agent.metrics()
    assert metric(samples, "hosttune_topology_changes_total", kind="irqs") == 1
    assert metric(samples, "hosttune_drift_events_total", area="irqs") == 0  # new, not drifted

    # a CPU going offline: seen, and re-planned at once (whether the policy still fits or not)
    mark = agent.mark()
    online = read(root, "/sys/devices/system/cpu/online")
    write(root, "/sys/devices/system/cpu/online", "0" if online != "0" else "0-1")
    assert agent.wait("topology_changed", kind="cpus", after=mark)["online"] != online
    check = agent.wait("check", after=mark, reason="cpus")
    # what the check must conclude, worked out independently: the plan for the host as it is now,
    # then (when there is one) verify after the agent's repairs
    planned = subprocess.run([sys.executable, "-m", "hosttune", "plan", "--root", root, "--json"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    if planned.returncode:
        assert planned.returncode == 2, planned.stderr
        assert check["result"] == "error"
        failed = agent.wait("check_failed", after=mark, reason="cpus")
        assert planned.stderr.strip().rsplit(": ", 1)[-1] in failed["error"]
    else:
        verify = subprocess.run([sys.executable, "-m", "hosttune", "verify", "--root", root, "--json"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        counts = json.loads(verify.stdout)["counts"]
        assert check["counts"] == counts
        assert check["result"] == "drift" if counts["drift"] else check["result"] in ("ok", "repaired")
    assert agent.proc.poll() is None


def test_metrics_are_typed_and_process_metrics_match_the_process(root, agents):
    from prometheus_client.parser import text_string_to_metric_families

    import psutil

    agent = agents(root).ready()
    proc = psutil.Process(agent.pid)
    before = sum(proc.cpu_times()[:2])
    text = agent.get("/metrics")
    after = sum(proc.cpu_times()[:2])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {name: f.type for name, f in families.items()}
    value = {name: f.samples[0].value for name, f in families.items() if len(f.samples) == 1}
    # cumulative figures are counters (the parser names a counter family without _total)
    for name in ("hosttune_agent_cpu_seconds", "process_cpu_seconds", "hosttune_checks", "hosttune_drift_events",
                 "hosttune_reapplied", "hosttune_config_reloads", "hosttune_topology_changes"):
        assert kinds.get(name) == "counter", (name, kinds.get(name))
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
                 "process_max_fds", "process_start_time_seconds", "hosttune_agent_max_rss_bytes"):
        assert kinds.get(name) == "gauge", (name, kinds.get(name))
    assert "# TYPE hosttune_agent_cpu_seconds_total counter" in text.splitlines()

    # the values are this process's, as psutil (the prometheus_client conventions' source) sees them
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert before - tick <= value["process_cpu_seconds"] <= after + tick
    assert value["hosttune_agent_cpu_seconds"] >= value["process_cpu_seconds"] - tick  # + its check processes
    assert abs(value["process_resident_memory_bytes"] - proc.memory_info().rss) < 4 << 20
    assert abs(value["process_start_time_seconds"] - proc.create_time()) < 1.0
    assert value["process_max_fds"] == proc.rlimit(psutil.RLIMIT_NOFILE)[0]
    assert abs(value["process_open_fds"] - proc.num_fds()) <= 2  # the scrape's own socket comes and goes


def test_log_lines_carry_journal_priorities_when_stdout_is_the_journal(root, agents):
    agent = agents(root, journal=True).ready()
    assert agent.other == []  # every line is <priority> + JSON
    assert agent.wait("ready")["priority"] == 6
    mark = agent.mark()
    write(root, "/proc/sys/vm/swappiness", "60")  # drift behind its back: a warning
    drift = agent.wait("drift", after=mark, area="sysctls")
    assert drift["level"] == "warning" and drift["priority"] == 4
    assert {e["priority"] for e in agent.events} <= {4, 6}
    assert agent.stop() == 0

    # an error (a bad config at start) at <3>, on stdout and on stderr when stderr is the journal too
    write_config(root, "agent: {interval: fast}\n")
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = subprocess.run([sys.executable, "-m", "hosttune", "agent", "--foreground", "--root", root], cwd=REPO,
                          stdout=write_end, stderr=write_end, env=env, timeout=60)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        lines = handle.read().splitlines()
    assert proc.returncode == 2
    assert any(line.startswith("<3>{") and '"start_failed"' in line for line in lines), lines
    assert any(line.startswith("<3>hosttune: error: ") and "agent.interval" in line for line in lines), lines


def test_a_big_host_keeps_only_the_plan_text_and_checks_in_children(tmp_path, agents):
    """Above INPROCESS_MAX_SETTINGS every check is forked and gets the plan as JSON text (parsed,
    it would stay in the agent: 2.1 MB on a 768-CPU host): checks still verify and repair."""
    from hosttune.agent.daemon import INPROCESS_MAX_SETTINGS
    from tests.treegen import Spec, write_tree

    root = str(tmp_path / "big")
    write_tree(root, Spec(sockets=2, cores_per_node=48, threads=2, irqs=1024, hostname="big"))
    os.makedirs(os.path.join(root, "etc/default"), exist_ok=True)
    write(root, "/etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"')
    write_config(root, CONFIG)
    agent = agents(root).ready()
    assert sum(agent.status()["counts"].values()) > INPROCESS_MAX_SETTINGS
    mark = agent.mark()
    write(root, "/proc/sys/vm/swappiness", "60")
    assert agent.wait("drift", after=mark, area="sysctls")["events"] == 1
    wait_for(lambda: read(root, "/proc/sys/vm/swappiness") == "10", DEADLINE, "the agent to put it back")
    checks = agent.status()["checks"]
    assert checks.get("error", 0) == 0 and checks.get("apply_failed", 0) == 0, checks


# -- configuration -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, field", [
    ("agent: {interval: fast}\n", "agent.interval"),
    ("agent: {intervall: 5}\n", "agent.intervall"),
    ("agent: {port: 70000}\n", "agent.port"),
    ("agent: {listen: localhost}\n", "agent.listen"),
    ("agent: {reapply: 1}\n", "agent.reapply"),
    ("agent: {replan_interval: 0}\n", "agent.replan_interval"),
    ("policy: {thp: sometimes}\nagent: {}\n", "policy.thp"),
    ("thp: sometimes\n", "thp"),
    ("agent: [1, 2]\n", "agent"),
])
def test_bad_config_at_start_exits_2_naming_the_field(root, text, field):
    path = write_config(root, text)
    proc = subprocess.run([sys.executable, "-m", "hosttune", "agent", "--foreground", "--root", root], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}: {field}:" in proc.stderr
    assert "Traceback" not in proc.stderr
    logged = json.loads(proc.stdout.splitlines()[-1])
    assert logged["event"] == "start_failed" and field in logged["error"]


def test_config_option_and_monitor_only(root, agents, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    proc = subprocess.run([sys.executable, "-m", "hosttune", "agent", "--foreground", "--root", root,
                           "--config", missing], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and missing in proc.stderr

    config = tmp_path / "agent.yaml"
    config.write_text(CONFIG.replace("fast_check_interval:", "reapply: false\n  fast_check_interval:"))
    before = read(root, "/proc/sys/vm/swappiness")
    agent = agents(root, "--config", str(config)).ready()
    assert agent.status()["config"]["path"] == str(config)
    assert read(root, "/proc/sys/vm/swappiness") == before  # reapply: false only reports
    drift = agent.wait("drift", area="sysctls")
    assert drift["fix"] is False and "vm.swappiness" in drift["settings"]
    assert metric(agent.metrics(), "hosttune_setting_ok", area="sysctls") == 0


def test_without_systemd_or_foreground_it_says_what_to_do(root):
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.run([sys.executable, "-m", "hosttune", "agent", "--root", root], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--foreground" in proc.stderr


def test_sighup_reloads_and_a_broken_config_keeps_the_old_one(root, agents):
    agent = agents(root).ready()
    path = write_config(root, CONFIG.replace("interval:", "interval: [") + "\n")  # not YAML
    mark = agent.mark()
    agent.proc.send_signal(signal.SIGHUP)
    failed = agent.wait("reload_failed", after=mark)
    assert path in failed["error"] and "YAML" in failed["error"]
    write_config(root, CONFIG.replace("fast_check_interval: 0.25", "fast_check_interval: soon"))
    mark = agent.mark()
    agent.proc.send_signal(signal.SIGHUP)
    assert "agent.fast_check_interval" in agent.wait("reload_failed", after=mark)["error"]
    assert agent.proc.poll() is None
    assert agent.status()["config"]["agent"]["fast_check_interval"] == 0.25

    # still working with the old config
    write(root, "/proc/sys/vm/swappiness", "60")
    wait_for(lambda: read(root, "/proc/sys/vm/swappiness") == "10", DEADLINE, "swappiness put back")

    # a good config is taken: new sysctl value, applied at once
    write_config(root, CONFIG.replace("profile: latency", "profile: latency\n  sysctls: {vm.swappiness: 20}"))
    mark = agent.mark()
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait("reloaded", after=mark)
    wait_for(lambda: read(root, "/proc/sys/vm/swappiness") == "20", DEADLINE, "the new swappiness")
    samples = agent.metrics()
    assert metric(samples, "hosttune_config_reloads_total", result="failed") == 2
    assert metric(samples, "hosttune_config_reloads_total", result="ok") == 1


# -- the lock, and an apply killed midway ---------------------------------------------------------
def test_lock_held_by_another_run_skips_the_round(root, agents):
    agent = agents(root).ready()
    with state.Lock(HostFS(root=root), wait=1):
        mark = agent.mark()
        write(root, "/proc/sys/vm/swappiness", "60")
        skipped = agent.wait("skipped", after=mark, reason="lock held")
        assert str(os.getpid()) in skipped["detail"]
        second = agent.mark()  # one more round, also skipped, and nothing written in between
        agent.wait("skipped", after=second, reason="lock held")
        assert read(root, "/proc/sys/vm/swappiness") == "60", "the agent wrote while the lock was held"
        # the round's result is counted just after its "skipped" line
        wait_for(lambda: (metric(agent.metrics(), "hosttune_checks_total", result="locked") or 0) >= 2, DEADLINE,
                 "two locked rounds counted")
    wait_for(lambda: read(root, "/proc/sys/vm/swappiness") == "10", DEADLINE, "the agent to catch up")


STAND_IN = """#!/bin/sh
# systemctl stand-in: records its arguments; a try-restart waits while the file "hold" exists
echo "$$ $*" >> "{dir}/calls"
if [ "$1" = try-restart ] && [ -e "{dir}/hold" ]; then
    echo $$ > "{dir}/held"
    while [ -e "{dir}/hold" ]; do sleep 0.05; done
fi
exit 0
"""


class HeldApply:
    """Freezes an agent's apply at its last step, with every value written and the journal still in
    the state file: irqbalance is "installed" in the root, so an apply that writes its banned CPUs
    ends with `systemctl try-restart irqbalance`, run (HOSTTUNE_RUN_COMMANDS=1) by a stand-in first
    on PATH that waits while the hold lasts."""

    def __init__(self, root: str, tmp_path):
        self.dir = tmp_path / "stand-in"
        self.dir.mkdir()
        script = self.dir / "systemctl"
        script.write_text(STAND_IN.format(dir=self.dir))
        script.chmod(0o755)
        (self.dir / "hold").touch()
        os.makedirs(os.path.join(root, "usr/sbin"), exist_ok=True)
        open(os.path.join(root, "usr/sbin/irqbalance"), "w").close()
        self.env = {**os.environ, "PATH": f"{self.dir}:{os.environ['PATH']}", "HOSTTUNE_RUN_COMMANDS": "1"}
        self.root = root

    def wait_held(self) -> dict:
        """Wait until the apply is held; returns its journal (run: pid = the check process)."""
        held = self.dir / "held"
        wait_for(held.exists, DEADLINE, "the apply to reach its last step (systemctl try-restart)")
        run = journal_of(self.root)
        assert run is not None, "held, but no journal in the state file"
        return run

    def release(self) -> None:
        (self.dir / "hold").unlink(missing_ok=True)


def journal_of(root: str) -> dict | None:
    """The journal ("run") of an apply in progress in the state file, or None."""
    try:
        with open(os.path.join(root, "var/lib/hosttune/state.json")) as handle:
            return json.load(handle)["run"]
    except (OSError, ValueError):
        return None


def signal_mask(pid: int, field: str) -> int:
    """SigIgn, SigPnd, ShdPnd, ... of /proc/PID/status as a bit mask (bit n-1 = signal n)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_sigterm_during_an_apply_lets_the_check_process_finish_it(root, agents, tmp_path):
    """systemctl stop (KillMode=mixed) sends SIGTERM to the agent alone: its check process, which
    ignores SIGTERM anyway, finishes the apply; the agent waits for it, then exits 0."""
    held = HeldApply(root, tmp_path)
    agent = agents(root, env=held.env)
    try:
        run = held.wait_held()
        child = run["pid"]
        assert child != agent.pid and alive(child)
        assert signal_mask(child, "SigIgn") & (1 << (signal.SIGTERM - 1)), "the check process must ignore SIGTERM"
        agent.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not (signal_mask(agent.pid, "SigPnd") | signal_mask(agent.pid, "ShdPnd"))
                 & (1 << (signal.SIGTERM - 1)), DEADLINE, "SIGTERM to reach the agent")
        assert alive(agent.pid) and alive(child), "the agent or its check process stopped in the middle of an apply"
        assert journal_of(root) == run
    finally:
        held.release()
    assert agent.proc.wait(DEADLINE) == 0
    names = [e["event"] for e in agent.events]
    assert agent.wait("check", reason="start")["result"] == "drift"  # kernel_args: the agent never stages them
    assert agent.wait("reapplied", area="irqs")["count"] >= 1
    assert agent.wait("command", argv=["systemctl", "try-restart", "irqbalance"])["result"] == "exit 0"
    assert names.index("check") < names.index("stopping")
    assert agent.wait("stopping")["signal"] == "SIGTERM"
    assert "check_failed" not in names
    assert not alive(child)
    assert journal_of(root) is None  # finished: not rolled back, nothing left for the next start
    assert read(root, "/proc/sys/vm/swappiness") == "10"


def test_a_check_running_past_check_timeout_is_killed_and_the_next_apply_recovers(root, agents, tmp_path):
    write_config(root, CONFIG.replace("fast_check_interval: 0.25", "fast_check_interval: 0.25\n  check_timeout: 5"))
    held = HeldApply(root, tmp_path)
    agent = agents(root, env=held.env)
    try:
        run = held.wait_held()
        failed = agent.wait("check_failed", reason="start")
        assert failed["result"] == "error" and "did not finish in 5 s and was killed" in failed["error"]
        assert f"(pid {run['pid']})" in failed["error"]
        assert not alive(run["pid"])
        assert journal_of(root) == run  # the killed apply's journal, left for the next apply
        agent.wait("ready")
    finally:
        held.release()
    # the next apply (drift behind the agent's back) first rolls the killed one back
    mark = agent.mark()
    write(root, "/proc/sys/vm/swappiness", "60")
    assert agent.wait("recovered", after=mark)["restored"] == len(run["changes"])
    wait_for(lambda: journal_of(root) is None and read(root, "/proc/sys/vm/swappiness") == "10", DEADLINE,
             "the host tuned again")
    assert agent.proc.poll() is None


def test_killed_in_the_middle_of_an_apply_the_next_start_rolls_back_and_finishes(root, agents, tmp_path):
    irqs = pinned_irqs(root)
    assert len(irqs) >= 2, "this machine's capture has fewer than two movable IRQs to pin"
    last = f"/proc/irq/{irqs[-1]}/smp_affinity_list"
    first = f"/proc/irq/{irqs[0]}/smp_affinity_list"
    original_irq = read(root, first)
    original_swappiness = read(root, "/proc/sys/vm/swappiness")
    assert original_swappiness != "10"
    state_file = os.path.join(root, "var/lib/hosttune/state.json")
    held = HeldApply(root, tmp_path)
    try:
        agent = agents(root, env=held.env)
        run = held.wait_held()
        assert read(root, "/proc/sys/vm/swappiness") == "10"  # written, the run not finished
        assert read(root, first) != original_irq
        agent.kill()
    finally:
        held.release()

    with open(state_file) as handle:  # consistent: the journal of the killed run, whole
        killed = json.load(handle)
    assert killed["schema"] == "hosttune.state/1" and killed["run"] == run
    wait_for(lambda: not alive(killed["run"]["pid"]), DEADLINE, "the check process that wrote it to be gone too")
    journalled = {c["path"] for c in killed["run"]["changes"]}
    assert {"/proc/sys/vm/swappiness", first, last} <= journalled
    assert killed["originals"]["/proc/sys/vm/swappiness"]["value"] == original_swappiness

    again = agents(root, env=held.env).ready()
    recovered = again.wait("recovered")
    assert recovered["restored"] == len(killed["run"]["changes"])
    assert again.wait("reapplied", area="irqs")["count"] >= 2
    assert read(root, "/proc/sys/vm/swappiness") == "10"
    with open(state_file) as handle:
        after = json.load(handle)
    assert after["run"] is None
    assert after["originals"]["/proc/sys/vm/swappiness"]["value"] == original_swappiness
    assert after["originals"][first]["value"] == original_irq
    assert again.stop() == 0

    # and restore still knows the values from before the very first apply
    proc = subprocess.run([sys.executable, "-m", "hosttune", "restore", "--root", root], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read(root, "/proc/sys/vm/swappiness") == original_swappiness
    assert read(root, first) == original_irq


# -- systemd ---------------------------------------------------------------------------------------
def test_sd_notify_ready_watchdog_stopping(root, agents, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "600000"}
    env.pop("WATCHDOG_PID", None)
    agent = agents(root, foreground=False, env=env)
    messages = []

    def receive() -> str:
        msg = listener.recv(4096).decode()
        messages.append(msg)
        return msg

    first = receive()
    assert first.startswith("READY=1\nSTATUS="), first
    assert agent.wait("start")["watchdog_s"] == 0.3  # pings every half of WATCHDOG_USEC
    pings = 0
    while pings < 3:
        if receive() == "WATCHDOG=1":
            pings += 1
    agent.proc.send_signal(signal.SIGTERM)
    while not messages[-1].startswith("STOPPING=1"):
        receive()
    assert agent.proc.wait(10) == 0
    listener.close()


def test_sighup_sends_reloading_then_ready(root, agents, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(DEADLINE)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path}
    env.pop("WATCHDOG_USEC", None)
    agent = agents(root, foreground=False, env=env)
    assert listener.recv(4096).decode().startswith("READY=1\n")

    def reload_messages() -> list[str]:
        """SIGHUP, then the datagrams up to READY=1; checks MONOTONIC_USEC against this clock."""
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        agent.proc.send_signal(signal.SIGHUP)
        got = []
        while not got or not got[-1].startswith("READY=1"):
            got.append(listener.recv(4096).decode())
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reloading = [m for m in got if m.startswith("RELOADING=1")]
        assert len(reloading) == 1 and got.index(reloading[0]) < len(got) - 1, got
        fields = dict(line.split("=", 1) for line in reloading[0].splitlines())
        assert before <= int(fields["MONOTONIC_USEC"]) <= after  # sd_notify(3): the time the reload began
        return got

    mark = agent.mark()
    reload_messages()
    agent.wait("reloaded", after=mark)
    write_config(root, "agent: {interval: fast}\n")  # a bad config: the old one is kept, READY=1 all the same
    mark = agent.mark()
    reload_messages()
    agent.wait("reload_failed", after=mark)
    assert agent.stop() == 0
    listener.close()


def test_unit_file():
    with open(UNIT) as handle:
        text = handle.read()
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in text.splitlines()
             if "=" in line and not line.startswith("#")}
    assert lines["Type"] == "notify" and lines["NotifyAccess"] == "main"
    assert lines["ExecStart"] == "/opt/hosttune/venv/bin/hosttune agent"
    assert lines["Restart"] == "on-failure" and lines["RestartPreventExitStatus"] == "2"
    assert lines["WatchdogSec"] and lines["ProtectSystem"] == "strict"
    assert lines["ProtectHome"] == "yes" and lines["PrivateTmp"] == "yes" and lines["NoNewPrivileges"] == "yes"
    assert lines["ProtectKernelTunables"] == "no"
    assert lines["StandardOutput"] == "journal" and lines["SyslogLevelPrefix"] == "yes"  # <N> priorities kept
    writable = " ".join(v for k, v in (line.split("=", 1) for line in text.splitlines()
                                       if line.startswith("ReadWritePaths=")))
    for path in ("/sys", "/proc/sys", "/proc/irq", "/etc/default", "/etc/sysctl.d", "/var/lib/hosttune", "/run"):
        assert path in writable.split()
    assert set(lines["CapabilityBoundingSet"].split()) == {"CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"}

    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (scripts/bootstrap installs systemd)"
    # verify checks that ExecStart exists: point it at this checkout's hosttune
    local = os.path.join(os.path.dirname(sys.executable), "hosttune")
    assert os.stat(local).st_mode & stat.S_IXUSR
    unit_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hosttune-unit-{os.getpid()}")
    os.makedirs(unit_dir, exist_ok=True)
    copy = os.path.join(unit_dir, "hosttune-agent.service")
    with open(copy, "w") as handle:
        handle.write(text.replace("/opt/hosttune/venv/bin/hosttune", local))
    try:
        proc = subprocess.run([analyze, "verify", "--man=no", copy], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "hosttune-agent" not in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(unit_dir)
