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
check is skipped and logged, and the next interval tries again. Only runtime areas
(worker.RUNTIME_AREAS) are re-applied; boot-time ones are verified (reboot pending) but never
staged by the agent.

This module is the loop; the /status document is hosttune.agent.status, the metrics
hosttune.agent.metrics, the instances' health probes hosttune.agent.probes.

Drift events count settings that were ok at the end of the previous check and are not now:
the first apply, settings of new IRQs and settings that stay wrong are not events.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import sys
import time
import traceback
from collections import Counter
from typing import Any

from hosttune import __version__, cpulist, discovery, engine, state, threads
from hosttune.agent import config as config_mod
from hosttune.agent import fastcheck
from hosttune.agent import status as status_mod
from hosttune.agent import worker
from hosttune.agent.args import add_arguments
from hosttune.agent.log import PRIORITIES, JsonLog, connected_to_journal
from hosttune.agent.metrics import Metrics
from hosttune.agent.probes import probe_instances
from hosttune.agent.server import StatusServer
from hosttune.errors import HosttuneError, PolicyError
from hosttune.sdnotify import Notifier
from hosttune.sysfs import HostFS, TarHostFS

RUNTIME_AREAS = worker.RUNTIME_AREAS
INPROCESS_MAX_SETTINGS = 1500  # verify-only checks of bigger hosts fork too (see Agent._check)


def _level(name: str) -> str:
    return name if name in ("debug", "info", "warning", "error") else "error" if name == "critical" else "info"


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
        # a policy that cannot be planned on this host is a config error (2); the plan is kept for
        # the first check, which then does not discover the host a second time
        self.start_plan: dict[str, Any] | None = self._check_plan(self.config, keep=True)
        self.pinned, self.pin_error = self._pin_housekeeping(self.start_plan["housekeeping"])
        self.server = self._bind(self.config)
        self.started = time.time()
        self.state = "starting"
        # the current plan as JSON text (children inherit it and parse it), and parsed only on hosts
        # whose verify runs here: parsed, a plan takes ~6x its text (2.1 MB vs 0.3 MB on a 768-CPU,
        # 4,096-IRQ host), which would stay in this process for good
        self.plan_json: str | None = None
        self.plan: dict[str, Any] | None = None
        self.settings_count = 0  # settings verified at the last check
        self.planned_at = 0.0
        # the last full check's summary, repeated while its inputs read the same (see _check)
        self.last_out: dict[str, Any] | None = None
        # how the last check got its answer: replan (discover, plan, verify, re-apply: forked),
        # unchanged (the fast check: inputs as last time), verify (in this process), verify_forked,
        # apply (a verify here found drift to re-apply: forked), none (failed before choosing);
        # rediscovered_<one of those>: a periodic re-discovery found the same plan first
        self.check_mode = "none"
        self.fast = fastcheck.FastCheck(self.fs.root)
        self.prev_ok: frozenset[int] = frozenset()  # settings ok at the last check (worker._key)
        self.prev_drift: dict[str, list[str]] = {}
        self.seen_irqs: frozenset[str] | None = None
        self.irq_sig: tuple[int, ...] | None = None  # /proc/irq's stat at the last listing
        self.list_irqs = True  # the next fast check lists /proc/irq whatever its stat says
        self.seen_online: str | None = None
        self.drift_events: Counter[str] = Counter()
        self.reapplied: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        self.modes: Counter[str] = Counter()  # checks by check_mode
        self.last_result: str | None = None
        self.last_counts: dict[str, Any] | None = None
        self.snapshot: dict[str, Any] = {}  # the check's part of /status (hosttune.agent.status)
        self._stop_signal: int | None = None
        self._reload = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- set-up ----------------------------------------------------------------------------------
    def _pin_housekeeping(self, cpus: list[int]) -> tuple[list[int] | None, str | None]:
        """The agent's threads (and the check processes it forks, which inherit the mask) run on the
        housekeeping CPUs, never on an isolated one (docs/isolation.md). Before the status server's
        thread starts; on the live host only (a test tree's CPUs are not this machine's)."""
        if not self.fs.is_live or not cpus:
            return None, None
        try:
            threads.pin_all(cpus)
        except OSError as exc:  # e.g. a container cpuset without them: stay where we were put
            return None, f"cannot run on the housekeeping CPUs {cpulist.format(cpus)}: {exc.strerror}"
        return sorted(os.sched_getaffinity(0)), None

    def _work(self, fn: Any, *args: Any) -> Any:
        """fn(*args) in a forked child (hosttune.agent.worker); its log records are logged here."""
        try:
            result, logs, rss = worker.run(fn, *args, timeout=self.config.agent.check_timeout,
                                           tick=self.notifier.watchdog,
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
            return StatusServer(cfg.agent.listen, cfg.agent.port, self.metrics.render, self.status, cfg.web)
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
        if self.pin_error:
            self.log("pin", level="warning", error=self.pin_error)
        if self.notifier.error:
            self.log("notify", level="warning", error=self.notifier.error)
        self._recover()
        self.check("start")
        self.state = "running"
        self.notifier.ready(status_mod.line(self.snapshot))
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
                     interrupted_at=status_mod.iso(result.get("started")), restored=len(result["restored"]),
                     paths=result["restored"][:50])

    def check(self, reason: str) -> str:
        started, t0, c0 = time.time(), time.monotonic(), _cpu_seconds()
        error = None
        self.check_mode = "none"
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
        self.modes[self.check_mode] += 1
        if self.check_mode != "unchanged":
            self.list_irqs = True
        self.snapshot["last_check"] = {"ts": status_mod.iso(started), "reason": reason, "result": result,
                                      "mode": self.check_mode, "duration_s": round(duration, 4), "error": error}
        changed = result != self.last_result or self.snapshot.get("counts") != self.last_counts
        notable = (changed or result in ("repaired", "apply_failed", "error")
                   or self.check_mode == "replan" or self.check_mode.startswith("rediscovered"))
        self.log("check", level="info" if notable else "debug",
                 reason=reason, result=result, mode=self.check_mode, duration_s=round(duration, 4),
                 cpu_s=round(_cpu_seconds() - c0, 4), counts=self.snapshot.get("counts"))
        self.last_result, self.last_counts = result, self.snapshot.get("counts")
        if self.state == "running":
            self.notifier.status(status_mod.line(self.snapshot))
        return result

    def _check(self, reason: str) -> str:
        """A check that re-plans or re-applies runs in a forked child: discovery and apply allocate
        in proportion to the host, and the daemon would keep that memory. A check that only
        verifies the current plan (the steady state) runs here when the host has at most
        INPROCESS_MAX_SETTINGS settings (it then costs at most ~2.5 MB, once), saving the fork's
        quarter of a check's CPU; on bigger hosts it forks too, to stay within the RSS budget, and
        the daemon keeps only the plan's JSON text, which the child parses."""
        root, policy, reapply = self.fs.root, self.config.policy, self.config.agent.reapply
        trial, self.start_plan = self.start_plan, None  # planned moments ago at start, or None
        if trial is None and self._replan_due(reason):
            if reason == "interval" and self.plan_json is not None:
                trial = self._rediscover()
            else:
                self._forget_plan()  # a host that cannot be planned any more gets no stale plan applied
                self.check_mode = "replan"
                out = self._work(worker.check, root, policy, None, self.prev_ok, reapply)
                return self._digest(out)
        if trial is not None:
            self._forget_plan()  # a new plan whose check fails must not leave the old one in place
            self.check_mode = "replan"
            out = self._work(worker.check, root, policy, trial["plan_json"], self.prev_ok, reapply)
            out.update(plan_json=trial["plan_json"], topology=trial["topology"])
            return self._digest(out)
        prefix = "rediscovered_" if self.check_mode == "rediscovered" else ""
        if self.last_out is not None and self._unchanged():
            self.check_mode = "unchanged"
            out = self.last_out  # verify's inputs read as they did: its rows would be the same
        elif self.plan is None:
            self.check_mode = "verify_forked"
            out = self._work(worker.check, root, policy, self.plan_json, self.prev_ok, reapply)
        else:
            self.check_mode = "verify"
            out = worker.check(root, policy, self.plan, self.prev_ok, reapply, apply=False)
            if out.get("needs_apply"):
                self.check_mode = "apply"
                out = self._work(worker.check, root, policy, self.plan_json, self.prev_ok, reapply)
        self.check_mode = prefix + self.check_mode
        return self._digest(out)

    def _rediscover(self) -> dict[str, Any] | None:
        """The periodic re-discovery (agent.replan_interval): discover and plan in a child. The same
        plan as the current one needs no full check (None: the check goes on as any other, and
        check_mode says "rediscovered_<mode>"); a different one is returned for a full check."""
        try:
            fresh = self._work(worker.trial_plan, self.fs.root, self.config.policy, True, self.plan_json)
        except HosttuneError:
            self._forget_plan()  # a host that cannot be planned any more gets no stale plan applied
            raise
        self.planned_at = time.time()
        if not fresh.get("same"):
            return fresh
        self.check_mode = "rediscovered"
        return None

    def _digest(self, out: dict[str, Any]) -> str:
        """Take a check's summary in: plan, fast-check record, drift log lines, metrics, status."""
        self._remember(out)
        if "counts" in out:
            self.settings_count = sum(out["counts"].values())
        if out.get("plan_json"):
            self.plan_json = out["plan_json"]
            self.plan = json.loads(self.plan_json) if self.settings_count <= INPROCESS_MAX_SETTINGS else None
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

    def _forget_plan(self) -> None:
        self.plan_json = self.plan = None
        self.last_out = None
        self.fast.forget()

    def _unchanged(self) -> bool:
        """The fast check (hosttune.agent.fastcheck), under the state lock like a full one: a
        held lock falls through to the full check, which reports it."""
        try:
            with state.Lock(self.fs, wait=0):
                return self.fast.unchanged()
        except HosttuneError as exc:
            if exc.exit_code != worker.LOCK_HELD:
                raise
            return False

    def _remember(self, out: dict[str, Any]) -> None:
        """Keep a full check's summary and its inputs' record for the fast checks that follow, unless
        the next check must be a full one: nothing recorded, or drift the agent re-applies."""
        if out is self.last_out:
            return
        self.last_out = None
        self.fast.forget()
        inputs = out.get("inputs")
        settled = out.get("settled", {})
        fixable = self.config.agent.reapply and set(settled) & set(RUNTIME_AREAS)
        if not inputs or out["locked"] or "counts" not in out or fixable or not self.fast.load(inputs):
            return
        keep = ("locked", "hostname", "profile", "kernel_args", "instances", "status", "counts",
                "reboot_required", "areas", "drifted")
        self.last_out = {k: out[k] for k in keep}
        # the rows of this check's last verify: what drifts there was not ok then (no new events)
        self.last_out["drift"] = settled

    def _replan_due(self, reason: str) -> bool:
        """Discovery is most of a check's cost (every CPU's and IRQ's files), and the topology only
        changes with IRQs or CPUs coming and going, which the fast check sees. So a check re-discovers
        and re-plans at start, after a reload or a topology change, when the fast check is off, and
        every agent.replan_interval seconds for what it cannot see (a driver or irqbalance
        installed); otherwise it verifies the current plan."""
        agent = self.config.agent
        return (self.plan_json is None or reason != "interval" or not agent.fast_check_interval
                or time.time() - self.planned_at >= agent.replan_interval)

    def _report_apply(self, applied: dict[str, Any]) -> int:
        if applied["recovered"]:
            self.log("recovered", level="warning", restored=len(applied["recovered"]), paths=applied["recovered"][:50])
        total = 0
        for area, change in applied["changes"].items():
            self.metrics.reapplied.inc(change["count"], area=area)
            self.reapplied[area] += change["count"]
            total += change["count"]
            self.log("reapplied", area=area, count=change["count"], settings=change["names"])
        for item in applied["refused"]:  # a write the host refused, with its area's reason
            self.log("unsupported", level="warning", area=item["area"], setting=item["name"], reason=item["reason"])
        for cmd in applied["commands"]:
            self.log("command", argv=cmd["argv"], result=cmd.get("result"), why=cmd.get("why"))
        return total

    def fast_check(self) -> list[str]:
        """Cheap: one directory listing and one small read. Returns what changed since last seen."""
        self.fast_fs.forget()
        # listing 4,096 IRQs costs 2-3 ms: done when /proc/irq's stat changed (procfs counts
        # subdirectories in st_nlink, a plain tree bumps st_mtime) and after a check that was not
        # answered by the fast path. An IRQ freed and another requested between two fast checks
        # leave st_nlink as it was, but the freed one's held affinity file then fails its read
        # (ENODEV), so the next check is a full one and the listing after it sees the new IRQ.
        sig = _dir_sig(self.fast_fs.host_path("/proc/irq"))
        if sig is not None and sig == self.irq_sig and self.seen_irqs is not None and not self.list_irqs:
            irqs, online = self.seen_irqs, self.fast_fs.read(f"{discovery.CPU}/online")
        else:
            irq_list, online = worker.topology_seen(self.fast_fs)
            irqs = frozenset(irq_list)
            self.irq_sig, self.list_irqs = sig, False
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
        self.metrics.record_check(out)
        instances = probe_instances(out["instances"])
        self.metrics.instance_ready.clear()
        for row in instances:
            self.metrics.instance_ready.set(1 if row["ready"] else 0, inference_instance=row["name"])
        verdict, bench = status_mod.read_bench(self.fs)
        if verdict is None:
            self.metrics.bench.clear()
        else:
            self.metrics.bench.set(verdict)
        self.snapshot.update({
            "hostname": out["hostname"], "status": out["status"], "counts": out["counts"], "areas": out["areas"],
            "drifted": out["drifted"], "reboot_required": out["reboot_required"], "kernel_args": out["kernel_args"],
            "instances": instances, "bench": bench,
            "topology": {"irqs": len(self.seen_irqs or ()), "online": self.seen_online,
                         "planned_at": status_mod.iso(self.planned_at)},
        })

    def status(self) -> dict[str, Any]:
        return status_mod.document(self)

    # -- reload ----------------------------------------------------------------------------------
    def _check_plan(self, cfg: config_mod.Config, keep: bool = False) -> dict[str, Any]:
        """A policy that validates but cannot be planned on this host is a config error too."""
        try:
            return self._work(worker.trial_plan, self.fs.root, cfg.policy, keep)
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
            self.notifier.ready(status_mod.line(self.snapshot))
            return False
        if server is not None:
            self.server = server
            self.server.start()
            host, port = self.server.address
            self.log("listening", address=host, port=port)
        else:
            self.server.web = new.web
        self.config = new
        self._forget_plan()
        self.metrics.reloads.inc(result="ok")
        self.log("reloaded", config=new.path or "defaults", profile=new.policy["profile"], **new.agent.to_dict())
        self.notifier.ready(status_mod.line(self.snapshot))
        return True


def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the forked checks)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _dir_sig(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_nlink, st.st_mtime_ns


def _error(text: str) -> None:
    """The one line for the operator on stderr (at error priority when stderr is the journal)."""
    prefix = PRIORITIES["error"] if connected_to_journal(sys.stderr) else ""
    print(f"{prefix}hosttune: error: {text}", file=sys.stderr)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hosttune agent")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level log lines too")
    args = parser.parse_args(argv)
    log = JsonLog(level="debug" if args.verbose else "info")
    log.capture_logging()
    notifier = Notifier()
    if not args.foreground and not notifier.enabled:
        _error("not started by systemd (no NOTIFY_SOCKET): use `systemctl start hosttune-agent`, "
               "or `hosttune agent --foreground`")
        return 2
    try:
        agent = Agent(args, log, notifier)
    except HosttuneError as exc:
        log("start_failed", level="error", error=str(exc), where=exc.where, exit_code=exc.exit_code)
        _error(str(exc))
        return exc.exit_code
    try:
        return agent.run()
    except HosttuneError as exc:  # e.g. a corrupt state file found at start
        log("start_failed", level="error", error=str(exc), where=exc.where, exit_code=exc.exit_code)
        _error(str(exc))
        agent.notifier.stopping()
        return exc.exit_code
