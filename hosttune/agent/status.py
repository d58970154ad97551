"""The agent's /status document (schema hosttune.agent-status/1), its systemd STATUS= line, and
the benchmark verdict it reports."""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from typing import Any

from hosttune import __version__
from hosttune.sysfs import HostFS

STATUS_SCHEMA = "hosttune.agent-status/1"
BENCH_FILE = "/var/lib/hosttune/bench/last.json"
BENCH_VALUES = {"stable": 1.0, "unstable": 0.0, "unsure": -1.0}
# none of these may be loaded in the agent (its RSS budget); /status lists any that is
HEAVY_MODULES = ("openvino", "numpy", "torch", "ansible", "ansible_runner", "fabric", "paramiko",
                 "prometheus_client", "ssl")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def read_bench(fs: HostFS) -> tuple[float | None, dict[str, Any] | None]:
    """(the hosttune_bench_stable value or None, the /status "bench" entry or None) from the
    verdict file `hosttune bench` writes."""
    fs.forget()
    text = fs.read(BENCH_FILE)
    if text is None:
        return None, None
    try:
        data = json.loads(text)
        verdict = data.get("verdict") if isinstance(data, dict) else None
    except json.JSONDecodeError as exc:
        data, verdict = {"error": f"not JSON ({exc.msg})"}, None
    if verdict not in BENCH_VALUES:
        return None, {"path": BENCH_FILE, "error": f"no verdict stable/unstable/unsure (got {verdict!r})"}
    summary = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return BENCH_VALUES[verdict], {"path": BENCH_FILE, **summary}


def document(agent: Any) -> dict[str, Any]:
    """The /status document of a hosttune.agent.daemon.Agent (called from the HTTP threads)."""
    host, port = agent.server.address
    times = os.times()
    return {
        "schema": STATUS_SCHEMA, "version": __version__, "pid": os.getpid(), "state": agent.state,
        "started": iso(agent.started), "uptime_s": round(time.time() - agent.started, 1),
        "root": agent.fs.root, "listen": {"address": host, "port": port},
        "config": {"path": agent.config.path, "profile": agent.config.policy["profile"],
                   "agent": agent.config.agent.to_dict()},
        **dict(agent.snapshot),
        "drift_events": dict(agent.drift_events), "reapplied": dict(agent.reapplied),
        "checks": dict(agent.results),
        "check_modes": dict(agent.modes),
        "process": {"heavy_modules": sorted(m for m in HEAVY_MODULES if sys.modules.get(m) is not None),
                    "modules": len(sys.modules), "threads": threading.active_count(),
                    "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                    "check_max_rss_kb": agent.child_max_rss_kb,
                    "cpu_seconds": round(times.user + times.system, 3),
                    "check_cpu_seconds": round(times.children_user + times.children_system, 3)},
    }


def line(snapshot: dict[str, Any]) -> str:
    """The one-line STATUS= systemd shows in `systemctl status`."""
    c = snapshot.get("counts")
    last = snapshot.get("last_check", {})
    if not c:
        return f"{last.get('result', 'starting')}: {last.get('error') or 'no check completed'}"
    return (f"{last.get('result')}: {c['ok']} ok, {c['drift']} drift, {c['unsupported']} unsupported"
            f"{', reboot pending' if snapshot.get('reboot_required') else ''}")
