"""The agent's loop.

    start:  load + check the config (exit 2 if bad) -> bind the status server -> roll back an
            interrupted apply (journal in the state file) -> first check, applying what differs
            -> READY=1
    loop:   every agent.interval s       full check: verify the plan, re-apply what drifted
            every fast_check_interval s  list /proc/irq, read cpu/online: a change -> re-discover,
                                         re-plan and check now
            every WATCHDOG_USEC/2        WATCHDOG=1
            SIGHUP                       reload the config (a bad one is logged, the old one kept)
            SIGTERM / SIGINT             STOPPING=1, exit 0

Checks, recovery and trial plans run in forked children (hosttune.agent.worker), so this process
stays small whatever the host's size. A check holds the state lock (state.Lock) while it reads,
and engine.apply takes it to write; when another hosttune run (an Ansible apply) holds it, the
check is skipped and logged, and the next interval tries again. Only runtime areas are
re-applied; kernel_args is verified (reboot pending) but never staged by the agent.

Drift events count settings that were ok at the end of the previous check and are not now:
the first apply, settings of new IRQs and settings that stay wrong are not events.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Any

from hosttune import __version__, engine
from hosttune.agent import cli as agent_cli
from hosttune.agent import config as config_mod
from hosttune.agent import worker
from hosttune.agent.log import JsonLog
from hosttune.agent.metrics import Registry
from hosttune.agent.notify import Notifier
from hosttune.agent.server import StatusServer
from hosttune.errors import HosttuneError, PolicyError
from hosttune.policy import AREAS
from hosttune.sysfs import HostFS, TarHostFS

RUNTIME_AREAS = worker.RUNTIME_AREAS
STATUSES = ("ok", "drift", "unsupported", "pending-reboot")
RESULTS = ("ok", "repaired", "drift", "locked", "apply_failed", "error")
BENCH_FILE = "/var/lib/hosttune/bench/last.json"
BENCH_VALUES = {"stable": 1.0, "unstable": 0.0, "unsure": -1.0}
HEAVY_MODULES = ("openvino", "numpy", "torch", "ansible", "ansible_runner", "fabric", "paramiko",
                 "prometheus_client", "ssl")
CHECK_TIMEOUT = 900.0  # seconds; engine commands (systemctl, update-grub) time out after 300 s each
REPLAN_AFTER = 600.0  # seconds: re-discover at least this often (see Agent._replan_due)
INPROCESS_MAX_SETTINGS = 1500  # verify-only checks of bigger hosts fork too (see Agent._check)
HEALTH_PATH = "/v2/health/ready"
HEALTH_TIMEOUT = 1.0
STATUS_SCHEMA = "hosttune.agent-status/1"


def _level(name: str) -> str:
    return name if name in ("debug", "info", "warning", "error") else "error" if name == "critical" else "info"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class Metrics:
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
                                      f"GET {HEALTH_PATH} with 200", ["instance"])
        self.bench = r.gauge("hosttune_bench_stable", "Verdict of the last benchmark: 1 stable, 0 unstable, -1 unsure "
                             "(absent without a verdict file)")
        self.reloads = r.counter("hosttune_config_reloads_total", "SIGHUP reloads by result (ok, failed)", ["result"])
        self.info = r.gauge("hosttune_agent_info", "Constant 1; the agent's version and policy profile",
                            ["version", "profile"])
        self.cpu = r.gauge("hosttune_agent_cpu_seconds", "CPU time (user+system) used by the agent and its "
                           "finished check processes")
        self.max_rss = r.gauge("hosttune_agent_max_rss_bytes", "Peak resident memory of the agent process")
        for area in AREAS:
            self.drift.inc(0, area=area)
            self.reapplied.inc(0, area=area)
        for result in RESULTS:
            self.checks.inc(0, result=result)
        for kind in ("irqs", "cpus"):
            self.topology.inc(0, kind=kind)
        for result in ("ok", "failed"):
            self.reloads.inc(0, result=result)

    def render(self) -> str:
        times = os.times()
        self.cpu.set(times.user + times.system + times.children_user + times.children_system)
        self.max_rss.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return self.registry.render()


def probe(host: str, port: int, timeout: float = HEALTH_TIMEOUT) -> tuple[bool, str]:
    """GET /v2/health/ready on an instance: (ready, detail)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", HEALTH_PATH)
        status = conn.getresponse().status
        return status == 200, f"HTTP {status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, getattr(exc, "strerror", None) or type(exc).__name__
    finally:
        conn.close()


def _probe_host(bind: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)


class Agent:
    def __init__(self, args: argparse.Namespace, log: JsonLog, notifier: Notifier) -> None:
        self.log = log
        self.notifier = notifier
        self.fs = HostFS.open(args.root)
        if isinstance(self.fs, TarHostFS):
            raise HosttuneError("the agent writes to its root: extract the capture and pass the directory",
                                where=args.root)
        self.fast_fs = HostFS(root=self.fs.root)  # its own cache, dropped on every fast check
        self.config_arg = args.config
        self.config = config_mod.load(self.fs, args.config)
        self.metrics = Metrics()
        self.notify_every = notifier.watchdog_period
        self.child_max_rss_kb = 0
        self._check_plan(self.config)  # a policy that cannot be planned on this host is a config error (2)
        self.server = self._bind(self.config)
        self.started = time.time()
        self.state = "starting"
        self.plan: dict[str, Any] | None = None  # the current plan (children inherit it)
        self.settings_count = 0  # settings verified at the last check
        self.planned_at = 0.0
        self.prev_ok: frozenset[int] = frozenset()  # settings ok at the last check (worker._key)
        self.prev_drift: dict[str, list[str]] = {}
        self.seen_irqs: frozenset[str] | None = None
        self.seen_online: str | None = None
        self.drift_events: Counter[str] = Counter()
        self.reapplied: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        self.last_result: str | None = None
        self.last_counts: dict[str, Any] | None = None
        self._status: dict[str, Any] = {}
        self._stop_signal: int | None = None
        self._reload = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- set-up ----------------------------------------------------------------------------------
    def _work(self, fn: Any, *args: Any) -> Any:
        """fn(*args) in a forked child (hosttune.agent.worker); its log records are logged here."""
        try:
            result, logs, rss = worker.run(fn, *args, timeout=CHECK_TIMEOUT, tick=self.notifier.watchdog,
                                           tick_every=self.notify_every)
        except HosttuneError as exc:
            for rec in getattr(exc, "logs", []):
                self.log("log", level=_level(rec["level"]), logger=rec["logger"], msg=rec["msg"])
            raise
        for rec in logs:
            self.log("log", level=_level(rec["level"]), logger=rec["logger"], msg=rec["msg"])
        self.child_max_rss_kb = max(self.child_max_rss_kb, rss)
        return result

    def _bind(self, cfg: config_mod.Config) -> StatusServer:
        try:
            return StatusServer(cfg.agent.listen, cfg.agent.port, self.metrics.render, self.status)
        except OSError as exc:
            raise HosttuneError(f"cannot listen on {cfg.agent.listen} port {cfg.agent.port}: {exc.strerror or exc}",
                                where=f"{cfg.path or 'defaults'}: agent.port", exit_code=1) from None

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop_signal = signum

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        self.server.start()
        host, port = self.server.address
        agent = self.config.agent
        self.log("start", version=__version__, pid=os.getpid(), root=self.fs.root, config=self.config.path or "defaults",
                 profile=self.config.policy["profile"], interval=agent.interval,
                 fast_check_interval=agent.fast_check_interval, reapply=agent.reapply,
                 systemd=self.notifier.enabled, watchdog_s=self.notifier.watchdog_period)
        self.log("listening", address=host, port=port)
        if self.notifier.error:
            self.log("notify", level="warning", error=self.notifier.error)
        self._recover()
        self.check("start")
        self.state = "running"
        self.notifier.ready(self._status_line())
        self.log("ready", result=self.last_result)

        now = time.monotonic()
        next_check = now + agent.interval
        next_fast = now + agent.fast_check_interval if agent.fast_check_interval else float("inf")
        wd = self.notifier.watchdog_period
        next_wd = now + wd if wd else float("inf")
        reason = "interval"
        while self._stop_signal is None:
            self._sleep(min(next_check, next_fast, next_wd) - time.monotonic())
            if self._stop_signal is not None:
                break
            now = time.monotonic()
            if self._reload:
                self._reload = False
                if self.reload():
                    agent = self.config.agent
                    next_fast = now + agent.fast_check_interval if agent.fast_check_interval else float("inf")
                    next_check, reason = now, "reload"
            if wd and now >= next_wd:
                self.notifier.watchdog()
                next_wd = now + wd
            if now >= next_fast:
                changed = self.fast_check()
                if changed:
                    next_check, reason = now, "+".join(changed)
                next_fast = now + agent.fast_check_interval
            if now >= next_check:
                self.check(reason)
                reason = "interval"
                next_check = time.monotonic() + agent.interval
                if wd:  # a long check must not starve the watchdog
                    self.notifier.watchdog()
                    next_wd = time.monotonic() + wd
        return self._shutdown()

    def _sleep(self, seconds: float) -> None:
        if self._stop_signal is not None or self._reload:
            return
        try:
            select.select([self._wake_r], [], [], max(0.0, seconds))
        finally:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _shutdown(self) -> int:
        self.state = "stopping"
        self.notifier.stopping()
        name = signal.Signals(self._stop_signal).name if self._stop_signal else None
        self.log("stopping", signal=name)
        self.server.stop()
        self.notifier.close()
        self.log("stopped")
        return 0

    # -- recovery, checks --------------------------------------------------------------------------
    def _recover(self) -> None:
        """Roll back an apply that was killed midway (its journal is in the state file)."""
        result = self._work(worker.recover, self.fs.root)
        if result.get("locked"):
            self.log("skipped", level="warning", phase="recover", reason="lock held", detail=result["detail"])
        elif result["restored"]:
            self.log("recovered", level="warning", interrupted_pid=result.get("pid"),
                     interrupted_at=_iso(result.get("started")), restored=len(result["restored"]),
                     paths=result["restored"][:50])

    def check(self, reason: str) -> str:
        started, t0 = time.time(), time.monotonic()
        error = None
        try:
            result = self._check(reason)
        except HosttuneError as exc:
            result = "apply_failed" if isinstance(exc, engine.ApplyFailed) else "error"
            error = str(exc)
            self.log("check_failed", level="error", reason=reason, result=result, error=error,
                     traceback=getattr(exc, "traceback", None))
        except Exception as exc:  # noqa: BLE001 - a bug in one check must not stop the agent
            result, error = "error", f"{type(exc).__name__}: {exc}"
            self.log("check_failed", level="error", reason=reason, result=result, error=error,
                     traceback=traceback.format_exc(limit=10))
        duration = time.monotonic() - t0
        m = self.metrics
        m.checks.inc(result=result)
        m.last_check.set(started)
        m.duration.set(duration)
        m.last_success.set(1 if result in ("ok", "repaired", "drift") else 0)
        self.results[result] += 1
        self._status["last_check"] = {"ts": _iso(started), "reason": reason, "result": result,
                                      "duration_s": round(duration, 4), "error": error}
        changed = result != self.last_result or self._status.get("counts") != self.last_counts
        self.log("check", level="info" if changed or result in ("repaired", "apply_failed", "error") else "debug",
                 reason=reason, result=result, duration_s=round(duration, 4),
                 counts=self._status.get("counts"))
        self.last_result, self.last_counts = result, self._status.get("counts")
        if self.state == "running":
            self.notifier.status(self._status_line())
        return result

    def _check(self, reason: str) -> str:
        """A check that re-plans or re-applies runs in a forked child: discovery and apply allocate
        in proportion to the host, and the daemon would keep that memory. A check that only
        verifies the current plan (the steady state) runs here when the host has at most
        INPROCESS_MAX_SETTINGS settings (it then costs at most ~2.5 MB, once), saving the fork's
        quarter of a check's CPU; on bigger hosts it forks too, to stay within the RSS budget."""
        root, policy, reapply = self.fs.root, self.config.policy, self.config.agent.reapply
        if self._replan_due(reason):
            self.plan = None  # a host that cannot be planned any more gets no stale plan applied
            out = self._work(worker.check, root, policy, None, self.prev_ok, reapply)
        elif self.settings_count > INPROCESS_MAX_SETTINGS:
            out = self._work(worker.check, root, policy, self.plan, self.prev_ok, reapply)
        else:
            out = worker.check(root, policy, self.plan, self.prev_ok, reapply, apply=False)
            if out.get("needs_apply"):
                out = self._work(worker.check, root, policy, self.plan, self.prev_ok, reapply)
        if "counts" in out:
            self.settings_count = sum(out["counts"].values())
        if out.get("plan_json"):
            self.plan = json.loads(out["plan_json"])
            self.planned_at = time.time()
            self.seen_irqs = frozenset(out["topology"]["irqs"])
            self.seen_online = out["topology"]["online"]
        for area, d in out.get("drift", {}).items():
            if d["events"]:
                self.metrics.drift.inc(d["events"], area=area)
                self.drift_events[area] += d["events"]
            if d["events"] or d["names"] != self.prev_drift.get(area):  # not the same drift every interval
                self.log("drift", level="warning" if d["events"] else "info", area=area, count=d["count"],
                         events=d["events"], settings=d["names"],
                         fix=self.config.agent.reapply and area in RUNTIME_AREAS)
        if "drift" in out:
            self.prev_drift = {area: d["names"] for area, d in out["drift"].items()}
        if "ok" in out:
            self.prev_ok = frozenset(out["ok"])
        applied = self._report_apply(out["applied"]) if "applied" in out else 0
        if out["locked"]:
            self.log("skipped", level="warning", reason="lock held", phase=out["phase"], detail=out["detail"],
                     next_in_s=self.config.agent.interval)
            return "locked"
        self._update(out)
        if out["counts"]["drift"]:
            return "drift"
        return "repaired" if applied else "ok"

    def _replan_due(self, reason: str) -> bool:
        """Discovery is most of a check's cost (every CPU's and IRQ's files), and the topology only
        changes with IRQs or CPUs coming and going, which the fast check sees. So a check re-discovers
        and re-plans at start, after a reload or a topology change, when the fast check is off, and
        every REPLAN_AFTER seconds for what it cannot see (a driver or irqbalance installed);
        otherwise it verifies the current plan."""
        return (self.plan is None or reason != "interval" or not self.config.agent.fast_check_interval
                or time.time() - self.planned_at >= REPLAN_AFTER)

    def _report_apply(self, applied: dict[str, Any]) -> int:
        if applied["recovered"]:
            self.log("recovered", level="warning", restored=len(applied["recovered"]), paths=applied["recovered"][:50])
        total = 0
        for area, change in applied["changes"].items():
            self.metrics.reapplied.inc(change["count"], area=area)
            self.reapplied[area] += change["count"]
            total += change["count"]
            self.log("reapplied", area=area, count=change["count"], settings=change["names"])
        for item in applied["refused"]:  # a write the host refused (e.g. a kernel-managed IRQ)
            self.log("unsupported", level="warning", area=item["area"], setting=item["name"], reason=item["reason"])
        for cmd in applied["commands"]:
            self.log("command", argv=cmd["argv"], result=cmd.get("result"), why=cmd.get("why"))
        return total

    def fast_check(self) -> list[str]:
        """Cheap: one directory listing and one small read. Returns what changed since last seen."""
        self.fast_fs.forget()
        irq_list, online = worker.topology_seen(self.fast_fs)
        irqs = frozenset(irq_list)
        before_irqs, before_online = self.seen_irqs, self.seen_online
        self.seen_irqs, self.seen_online = irqs, online
        changed = []
        if before_irqs is not None and irqs != before_irqs:
            changed.append("irqs")
            self.metrics.topology.inc(kind="irqs")
            self.log("topology_changed", kind="irqs", added=sorted(irqs - before_irqs, key=int)[:50],
                     removed=sorted(before_irqs - irqs, key=int)[:50])
        if before_online is not None and online != before_online:
            changed.append("cpus")
            self.metrics.topology.inc(kind="cpus")
            self.log("topology_changed", kind="cpus", online_before=before_online, online=online)
        return changed

    # -- metrics and status ----------------------------------------------------------------------
    def _update(self, out: dict[str, Any]) -> None:
        m = self.metrics
        per_area = out["areas"]
        for area in AREAS:
            counts = per_area.get(area)
            for status in STATUSES:
                if counts is None:
                    m.settings.remove(area=area, status=status)
                else:
                    m.settings.set(counts.get(status, 0), area=area, status=status)
            if counts is None or sum(counts.values()) == counts.get("unsupported", 0):
                m.setting_ok.remove(area=area)
            else:
                m.setting_ok.set(0 if counts.get("drift") else 1, area=area)
        m.reboot.set(1 if out["reboot_required"] else 0)
        m.info.clear()
        m.info.set(1, version=__version__, profile=out["profile"])

        instances = []
        m.instance_ready.clear()
        for inst in out["instances"]:
            host = _probe_host(inst["bind"])
            ready, detail = probe(host, inst["port"])
            m.instance_ready.set(1 if ready else 0, instance=inst["name"])
            instances.append({"name": inst["name"], "node": inst["node"], "url": f"http://{host}:{inst['port']}{HEALTH_PATH}",
                              "ready": ready, "detail": detail})
        bench = self._bench()

        self._status.update({
            "hostname": out["hostname"], "status": out["status"], "counts": out["counts"], "areas": per_area,
            "drifted": out["drifted"], "reboot_required": out["reboot_required"], "kernel_args": out["kernel_args"],
            "instances": instances, "bench": bench,
            "topology": {"irqs": len(self.seen_irqs or ()), "online": self.seen_online,
                         "planned_at": _iso(self.planned_at)},
        })

    def _bench(self) -> dict[str, Any] | None:
        self.fs.forget()
        text = self.fs.read(BENCH_FILE)
        if text is None:
            self.metrics.bench.clear()
            return None
        try:
            data = json.loads(text)
            verdict = data.get("verdict") if isinstance(data, dict) else None
        except json.JSONDecodeError as exc:
            data, verdict = {"error": f"not JSON ({exc.msg})"}, None
        if verdict not in BENCH_VALUES:
            self.metrics.bench.clear()
            return {"path": BENCH_FILE, "error": f"no verdict stable/unstable/unsure (got {verdict!r})"}
        self.metrics.bench.set(BENCH_VALUES[verdict])
        summary = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool)) or v is None}
        return {"path": BENCH_FILE, **summary}

    def status(self) -> dict[str, Any]:
        """The /status document (called from the HTTP threads)."""
        host, port = self.server.address
        times = os.times()
        snap = dict(self._status)
        return {
            "schema": STATUS_SCHEMA, "version": __version__, "pid": os.getpid(), "state": self.state,
            "started": _iso(self.started), "uptime_s": round(time.time() - self.started, 1),
            "root": self.fs.root, "listen": {"address": host, "port": port},
            "config": {"path": self.config.path, "profile": self.config.policy["profile"],
                       "agent": self.config.agent.to_dict()},
            **snap,
            "drift_events": dict(self.drift_events), "reapplied": dict(self.reapplied),
            "checks": dict(self.results),
            "process": {"heavy_modules": sorted(m for m in HEAVY_MODULES if sys.modules.get(m) is not None),
                        "modules": len(sys.modules), "threads": threading.active_count(),
                        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                        "check_max_rss_kb": self.child_max_rss_kb,
                        "cpu_seconds": round(times.user + times.system, 3),
                        "check_cpu_seconds": round(times.children_user + times.children_system, 3)},
        }

    def _status_line(self) -> str:
        c = self._status.get("counts")
        last = self._status.get("last_check", {})
        if not c:
            return f"{last.get('result', 'starting')}: {last.get('error') or 'no check completed'}"
        text = (f"{last.get('result')}: {c['ok']} ok, {c['drift']} drift, {c['unsupported']} unsupported"
                f"{', reboot pending' if self._status.get('reboot_required') else ''}")
        return text

    # -- reload ----------------------------------------------------------------------------------
    def _check_plan(self, cfg: config_mod.Config) -> None:
        """A policy that validates but cannot be planned on this host is a config error too."""
        try:
            self._work(worker.trial_plan, self.fs.root, cfg.policy)
        except PolicyError as exc:
            exc.where = f"{cfg.path or 'defaults'}: {exc.where}" if exc.where else cfg.path
            raise

    def _rebind(self, new: config_mod.Config) -> StatusServer | None:
        """A new server when listen/port changed (the old one stopped), else None."""
        old = self.config
        if (new.agent.listen, new.agent.port) == (old.agent.listen, old.agent.port):
            return None
        if new.agent.port != old.agent.port or new.agent.port == 0:
            server = self._bind(new)
            self.server.stop()
            return server
        self.server.stop()  # same port on another address: free it first
        try:
            return self._bind(new)
        except HosttuneError:
            try:
                self.server = self._bind(old)
                self.server.start()
            except HosttuneError as exc:
                self.log("listen_failed", level="error", error=str(exc))
            raise

    def reload(self) -> bool:
        """SIGHUP: read the config again; keep the old one if the new one is bad."""
        self.notifier.reloading()
        try:
            new = config_mod.load(self.fs, self.config_arg)
            self._check_plan(new)
            server = self._rebind(new)
        except HosttuneError as exc:
            self.metrics.reloads.inc(result="failed")
            self.log("reload_failed", level="error", error=str(exc), kept=self.config.path or "defaults")
            self.notifier.ready(self._status_line())
            return False
        if server is not None:
            self.server = server
            self.server.start()
            host, port = self.server.address
            self.log("listening", address=host, port=port)
        self.config = new
        self.plan = None
        self.metrics.reloads.inc(result="ok")
        self.log("reloaded", config=new.path or "defaults", profile=new.policy["profile"], **new.agent.to_dict())
        self.notifier.ready(self._status_line())
        return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hosttune agent")
    agent_cli.add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level log lines too")
    args = parser.parse_args(argv)
    log = JsonLog(level="debug" if args.verbose else "info")
    log.capture_logging()
    notifier = Notifier()
    if not args.foreground and not notifier.enabled:
        print("hosttune: error: not started by systemd (no NOTIFY_SOCKET): use `systemctl start hosttune-agent`, "
              "or `hosttune agent --foreground`", file=sys.stderr)
        return 2
    try:
        agent = Agent(args, log, notifier)
    except HosttuneError as exc:
        log("start_failed", level="error", error=str(exc), where=exc.where, exit_code=exc.exit_code)
        print(f"hosttune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        return agent.run()
    except HosttuneError as exc:  # e.g. a corrupt state file found at start
        log("start_failed", level="error", error=str(exc), where=exc.where, exit_code=exc.exit_code)
        print(f"hosttune: error: {exc}", file=sys.stderr)
        agent.notifier.stopping()
        return exc.exit_code
