"""`hosttune agent`: real agent processes on a writable copy of this machine's capture.

Each test starts `python -m hosttune agent` (which re-executes as `python -m hosttune.agent`) as
a subprocess and talks to it as systemd, Prometheus or an operator would: files in its root,
signals, its HTTP endpoints, its JSON log lines, a NOTIFY_SOCKET.
"""

from __future__ import annotations

import json
import os
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

    def __init__(self, root: str, *args: str, foreground: bool = True, env: dict | None = None):
        argv = [sys.executable, "-m", "hosttune", "agent", "--root", root, *args]
        if foreground:
            argv.append("--foreground")
        # its own process group, which stands in for the unit's cgroup: the agent forks a child
        # for each check, and systemd kills the whole cgroup, not just the main process
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        self.events: list[dict] = []
        self.other: list[str] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()

    def _read(self, stream, is_stdout):
        for line in stream:
            with self.cond:
                if not is_stdout:
                    self.stderr.append(line)
                else:
                    try:
                        self.events.append(json.loads(line))
                    except json.JSONDecodeError:
                        self.other.append(line)
                self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait(self, event: str, timeout: float = 15.0, after: int = 0, **fields) -> dict:
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
        return self.proc.stdout is not None and not self.proc.stdout.closed and self.proc.poll() is None

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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
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
    changed_at = time.monotonic()
    wait_for(lambda: read(root, irq_path) == pinned and read(root, "/proc/sys/vm/swappiness") == "10",
             INTERVAL + 2.0, "the agent to put both values back")
    assert time.monotonic() - changed_at <= INTERVAL + 2.0

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

    samples = agent.metrics()  # parsed by prometheus_client's own parser
    names = {name for name, _ in samples}
    for name in ("hosttune_setting_ok", "hosttune_settings", "hosttune_drift_events_total", "hosttune_reboot_pending",
                 "hosttune_last_check_timestamp_seconds", "hosttune_check_duration_seconds",
                 "hosttune_checks_total", "hosttune_instance_ready", "hosttune_reapplied_total"):
        assert name in names, name
    assert metric(samples, "hosttune_reboot_pending") == 1
    assert metric(samples, "hosttune_instance_ready", instance=planned[0]["name"]) == 1
    if len(planned) > 1:  # nothing listens on the next ports
        assert metric(samples, "hosttune_instance_ready", instance=planned[1]["name"]) == 0
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
    wait_for(lambda: metric(agent.metrics(), "hosttune_bench_stable") == 0, INTERVAL + 2, "the bench verdict")
    assert agent.status()["bench"]["verdict"] == "unstable"
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_new_irq_is_pinned_by_the_fast_check(root, agents):
    write_config(root, CONFIG.replace(f"interval: {INTERVAL}", "interval: 300"))  # only the fast check can see it
    agent = agents(root).ready()
    assert pinned_irqs(root)
    new = os.path.join(root, "proc/irq/999")
    os.makedirs(new)
    write(root, "/proc/irq/999/node", "0")
    write(root, "/proc/irq/999/smp_affinity_list", "0-1023")
    event = agent.wait("topology_changed", kind="irqs", timeout=5)
    assert event["added"] == ["999"]
    expected = plan_of(root)["settings"]["irqs"]["default_affinity"]
    from hosttune import cpulist

    wait_for(lambda: read(root, "/proc/irq/999/smp_affinity_list") == cpulist.format(expected), 5,
             "the new IRQ to be pinned")
    samples = agent.metrics()
    assert metric(samples, "hosttune_topology_changes_total", kind="irqs") == 1
    assert metric(samples, "hosttune_drift_events_total", area="irqs") == 0  # new, not drifted

    # a CPU going offline: seen, and re-planned at once (whether the policy still fits or not)
    mark = agent.mark()
    online = read(root, "/sys/devices/system/cpu/online")
    write(root, "/sys/devices/system/cpu/online", "0" if online != "0" else "0-1")
    assert agent.wait("topology_changed", kind="cpus", after=mark, timeout=5)["online"] != online
    check = agent.wait("check", after=mark, reason="cpus", timeout=5)
    assert check["result"] in ("ok", "repaired", "drift", "error")
    assert agent.proc.poll() is None


# -- configuration -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, field", [
    ("agent: {interval: fast}\n", "agent.interval"),
    ("agent: {intervall: 5}\n", "agent.intervall"),
    ("agent: {port: 70000}\n", "agent.port"),
    ("agent: {listen: localhost}\n", "agent.listen"),
    ("agent: {reapply: 1}\n", "agent.reapply"),
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
    wait_for(lambda: read(root, "/proc/sys/vm/swappiness") == "10", INTERVAL + 2, "swappiness put back")

    # a good config is taken: new sysctl value, applied at once
    write_config(root, CONFIG.replace("profile: latency", "profile: latency\n  sysctls: {vm.swappiness: 20}"))
    mark = agent.mark()
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait("reloaded", after=mark)
    wait_for(lambda: read(root, "/proc/sys/vm/swappiness") == "20", INTERVAL + 2, "the new swappiness")
    samples = agent.metrics()
    assert metric(samples, "hosttune_config_reloads_total", result="failed") == 2
    assert metric(samples, "hosttune_config_reloads_total", result="ok") == 1


# -- the lock, and an apply killed midway ---------------------------------------------------------
def test_lock_held_by_another_run_skips_the_round(root, agents):
    agent = agents(root).ready()
    with state.Lock(HostFS(root=root), wait=1):
        mark = agent.mark()
        write(root, "/proc/sys/vm/swappiness", "60")
        skipped = agent.wait("skipped", after=mark, reason="lock held", timeout=INTERVAL + 3)
        assert str(os.getpid()) in skipped["detail"]
        time.sleep(INTERVAL + 0.5)
        assert read(root, "/proc/sys/vm/swappiness") == "60", "the agent wrote while the lock was held"
        assert metric(agent.metrics(), "hosttune_checks_total", result="locked") >= 1
    wait_for(lambda: read(root, "/proc/sys/vm/swappiness") == "10", INTERVAL + 2, "the agent to catch up")


class FakeKernelFile:
    """A FIFO standing in for a sysfs file: reads get `value`, a write blocks forever, so an
    apply can be frozen between its journal and its last write."""

    def __init__(self, path: str, value: str):
        self.path, self.value = path, value
        os.unlink(path)
        os.mkfifo(path)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                with open(self.path, "w") as fifo:  # blocks until a reader opens it
                    fifo.write(self.value + "\n")
            except (BrokenPipeError, FileNotFoundError):
                pass
            time.sleep(0.2)  # let the reader see EOF before the next writer appears

    def close(self):
        self.stopping = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases the writer blocked in open()
        self.thread.join(5)
        os.close(fd)
        os.unlink(self.path)
        with open(self.path, "w") as handle:
            handle.write(self.value + "\n")


def test_killed_in_the_middle_of_an_apply_the_next_start_rolls_back_and_finishes(root, agents):
    irqs = pinned_irqs(root)
    if len(irqs) < 2:
        pytest.skip("needs two movable IRQs in this machine's capture")
    last = f"/proc/irq/{irqs[-1]}/smp_affinity_list"
    first = f"/proc/irq/{irqs[0]}/smp_affinity_list"
    original_irq = read(root, first)
    original_swappiness = read(root, "/proc/sys/vm/swappiness")
    assert original_swappiness != "10"
    fifo = FakeKernelFile(os.path.join(root, last.lstrip("/")), read(root, last))
    state_file = os.path.join(root, "var/lib/hosttune/state.json")
    try:
        agent = agents(root)

        def journal():
            try:
                with open(state_file) as handle:
                    return json.load(handle)["run"]
            except (OSError, ValueError):
                return None

        run = wait_for(journal, 15, "the apply to write its journal")
        time.sleep(0.3)  # it is now blocked writing the last IRQ
        assert read(root, "/proc/sys/vm/swappiness") == "10"  # written before the IRQs
        assert read(root, first) != original_irq
        agent.kill()
    finally:
        fifo.close()

    with open(state_file) as handle:  # consistent: the journal of the killed run, whole
        killed = json.load(handle)
    assert killed["schema"] == "hosttune.state/1" and killed["run"] is not None
    wait_for(lambda: not alive(killed["run"]["pid"]), 5, "the check process that wrote it to be gone too")
    journalled = {c["path"] for c in killed["run"]["changes"]}
    assert {"/proc/sys/vm/swappiness", first, last} <= journalled
    assert killed["originals"]["/proc/sys/vm/swappiness"]["value"] == original_swappiness

    again = agents(root).ready()
    recovered = again.wait("recovered")
    assert recovered["restored"] == len(killed["run"]["changes"]) == len(run["changes"])
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
    start = time.monotonic()
    pings = 0
    while pings < 3:
        if receive() == "WATCHDOG=1":
            pings += 1
    assert time.monotonic() - start < 3  # every 0.3 s (half of WATCHDOG_USEC)
    agent.proc.send_signal(signal.SIGTERM)
    while not messages[-1].startswith("STOPPING=1"):
        receive()
    assert agent.proc.wait(10) == 0
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
    writable = " ".join(v for k, v in (line.split("=", 1) for line in text.splitlines()
                                       if line.startswith("ReadWritePaths=")))
    for path in ("/sys", "/proc/sys", "/proc/irq", "/etc/default", "/etc/sysctl.d", "/var/lib/hosttune", "/run"):
        assert path in writable.split()
    assert set(lines["CapabilityBoundingSet"].split()) == {"CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"}

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
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
