"""The agent's metrics (Metrics) on a small Prometheus registry: gauges and counters with labels,
rendered in the text exposition format 0.0.4, plus the standard process_* metrics.

Why not prometheus_client: importing it loads prometheus_client.exposition, which imports ssl
unconditionally (libssl + libcrypto, about 5 MB RSS) along with urllib.request and wsgiref; with it
the agent measured 27-28 MB against a 25 MB budget. The agent needs two metric types and one
output format (written by hosttune.exposition); the tests parse it with prometheus_client's parser.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterable
from typing import Any

from hosttune import __version__
from hosttune.agent.probes import HEALTH_PATH
from hosttune.exposition import CONTENT_TYPE, header, sample  # noqa: F401 (CONTENT_TYPE: agent.server)
from hosttune.policy import AREAS

STATUSES = ("ok", "drift", "unsupported", "pending-reboot")
RESULTS = ("ok", "repaired", "drift", "locked", "apply_failed", "error")


class Metric:
    def __init__(self, registry: Registry, name: str, help: str, kind: str, labels: Iterable[str] = ()) -> None:
        self.registry = registry
        self.name = name
        self.help = help
        self.kind = kind
        self.labels = tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labels)}")
        return tuple(str(labels[n]) for n in self.labels)

    def set(self, value: float, **labels: str) -> None:
        with self.registry.lock:
            self.values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up")
        key = self._key(labels)
        with self.registry.lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float | None:
        with self.registry.lock:
            return self.values.get(self._key(labels))

    def remove(self, **labels: str) -> None:
        with self.registry.lock:
            self.values.pop(self._key(labels), None)

    def clear(self) -> None:
        with self.registry.lock:
            self.values.clear()

    def render(self, out: list[str]) -> None:
        header(out, self.name, self.help, self.kind)
        for key, value in sorted(self.values.items()):
            out.append(sample(self.name, zip(self.labels, key), value))


class Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: list[Metric] = []

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Metric:
        return self._add(Metric(self, name, help, "gauge", labels))

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Metric:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        return self._add(Metric(self, name, help, "counter", labels))

    def _add(self, metric: Metric) -> Metric:
        if any(m.name == metric.name for m in self.metrics):
            raise ValueError(f"duplicate metric {metric.name}")
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        out: list[str] = []
        with self.lock:
            for metric in self.metrics:
                metric.render(out)
        return "\n".join(out) + "\n"


class Metrics:
    """Every metric the agent exports. Values the agent counts are updated as they happen; the
    process figures are read from /proc/self when scraped."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.setting_ok = r.gauge("hosttune_setting_ok", "1 when no setting of the area differs from the plan, 0 when "
                                  "one does (areas with no supported setting are absent)", ["area"])
        self.settings = r.gauge("hosttune_settings", "Settings per area and verify status "
                                "(ok, drift, unsupported, pending-reboot) at the last check", ["area", "status"])
        self.drift = r.counter("hosttune_drift_events_total", "Settings found changed behind the agent's back: ok at "
                               "the previous check, different from the plan now", ["area"])
        self.reapplied = r.counter("hosttune_reapplied_total", "Values the agent wrote back to match the plan",
                                   ["area"])
        self.reboot = r.gauge("hosttune_reboot_pending", "1 when the running kernel lacks planned kernel arguments "
                              "(or isolated CPUs differ until a reboot)")
        self.last_check = r.gauge("hosttune_last_check_timestamp_seconds", "Unix time of the last full check")
        self.last_success = r.gauge("hosttune_last_check_success", "1 when the last full check ran to the end "
                                    "(drift or not), 0 when it failed or was skipped")
        self.duration = r.gauge("hosttune_check_duration_seconds", "Duration of the last full check (discover, "
                                "plan, verify, re-apply)")
        self.checks = r.counter("hosttune_checks_total", "Full checks by result: ok, repaired (drift put back), drift "
                                "(still differs), locked (another run held the lock), apply_failed, error",
                                ["result"])
        self.topology = r.counter("hosttune_topology_changes_total", "Fast checks that saw IRQs appear/disappear or "
                                  "CPUs go online/offline (each triggers a full check)", ["kind"])
        self.instance_ready = r.gauge("hosttune_instance_ready", f"1 when the plan's inference instance answers "
                                      f"GET {HEALTH_PATH} on its probe_url with 200", ["inference_instance"])
        self.bench = r.gauge("hosttune_bench_stable", "Verdict of the last benchmark: 1 stable, 0 unstable, -1 unsure "
                             "(absent without a verdict file)")
        self.reloads = r.counter("hosttune_config_reloads_total", "SIGHUP reloads by result (ok, failed)", ["result"])
        self.info = r.gauge("hosttune_agent_info", "Constant 1; the agent's version and policy profile",
                            ["version", "profile"])
        self.cpu = r.counter("hosttune_agent_cpu_seconds_total", "CPU time (user+system) used by the agent and its "
                             "finished check processes")
        self.max_rss = r.gauge("hosttune_agent_max_rss_bytes", "Peak resident memory of the agent process")
        # the standard process metrics, as Prometheus client libraries define them
        self.proc_cpu = r.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
        self.proc_rss = r.gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
        self.proc_vms = r.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.")
        self.proc_fds = r.gauge("process_open_fds", "Number of open file descriptors.")
        self.proc_max_fds = r.gauge("process_max_fds", "Maximum number of open file descriptors.")
        self.proc_start = r.gauge("process_start_time_seconds", "Start time of the process since unix epoch in "
                                  "seconds.")
        self.proc_start.set(_start_time())
        for area in AREAS:
            self.drift.inc(0, area=area)
            self.reapplied.inc(0, area=area)
        for result in RESULTS:
            self.checks.inc(0, result=result)
        for kind in ("irqs", "cpus"):
            self.topology.inc(0, kind=kind)
        for result in ("ok", "failed"):
            self.reloads.inc(0, result=result)

    def record_check(self, out: dict[str, Any]) -> None:
        """Per-area settings, reboot and info from a check summary (hosttune.agent.worker.check)."""
        per_area = out["areas"]
        for area in AREAS:
            counts = per_area.get(area)
            for status in STATUSES:
                if counts is None:
                    self.settings.remove(area=area, status=status)
                else:
                    self.settings.set(counts.get(status, 0), area=area, status=status)
            if counts is None or sum(counts.values()) == counts.get("unsupported", 0):
                self.setting_ok.remove(area=area)
            else:
                self.setting_ok.set(0 if counts.get("drift") else 1, area=area)
        self.reboot.set(1 if out["reboot_required"] else 0)
        self.info.clear()
        self.info.set(1, version=__version__, profile=out["profile"])

    def render(self) -> str:
        times = os.times()
        self.cpu.set(times.user + times.system + times.children_user + times.children_system)
        self.max_rss.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        stat = _self_stat()
        self.proc_cpu.set((stat["utime"] + stat["stime"]) / _TICKS)
        self.proc_rss.set(stat["rss"] * _PAGE)
        self.proc_vms.set(stat["vsize"])
        self.proc_fds.set(_open_fds())
        self.proc_max_fds.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        return self.registry.render()


# The agent's own figures come from the live /proc/self whatever --root says (they describe this
# process, not the tuned host), so they are read here and not through HostFS.
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _open_fds() -> int:
    """Open descriptors: the size Linux >= 6.2 reports for /proc/self/fd (listing it takes 16 ms with
    the 8,000 files the fast check holds on a 768-CPU host), else its entries."""
    return os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))


def _self_stat() -> dict[str, int]:
    """utime, stime, starttime (clock ticks), vsize (bytes), rss (pages) of /proc/self/stat (proc(5))."""
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces
    # fields[0] is field 3 (state) of proc(5): field N is fields[N - 3]
    return {"utime": int(fields[11]), "stime": int(fields[12]), "starttime": int(fields[19]),
            "vsize": int(fields[20]), "rss": int(fields[21])}


def _start_time() -> float:
    """Unix time this process started: boot time (btime of /proc/stat) + starttime."""
    with open("/proc/stat", "rb") as handle:
        for line in handle:
            if line.startswith(b"btime "):
                return int(line.split()[1]) + _self_stat()["starttime"] / _TICKS
    return time.time()  # no btime line (not Linux): about now, as the agent starts
