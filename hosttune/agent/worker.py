"""The agent's heavy work, run in short-lived forked children.

A check that re-discovers reads every CPU's and IRQ's files and builds the topology and the
plan. A check that re-applies builds an apply report and the state's journal. Both allocate in
proportion to the host (2,300 settings on a 256-CPU host with 1,024 IRQs). In the daemon itself
that memory would stay for good, because CPython does not hand fragmented heap back to the
system. Measured on a synthetic 256-CPU/1,024-IRQ tree: 30 MB in-process, about 22 MB with this
module.

So the daemon forks for those checks, for recovery and for trial plans. The child inherits the
current plan and state copy-on-write, does the work, writes a compact JSON summary to a pipe and
exits, and its memory goes with it. A check that only verifies runs in the daemon on hosts of up to
daemon.INPROCESS_MAX_SETTINGS settings (the same `check` function with apply=False), and forked
on bigger ones.

The child ignores SIGTERM/SIGHUP/SIGINT, so an apply in progress finishes when the service is
stopped; the daemon waits for it (the unit uses KillMode=mixed). The child never touches the
daemon's locks, log or metrics. What it has to say, log records of hosttune.engine included,
comes back in the summary.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from hosttune import areas, discovery, engine, numbers, state
from hosttune.agent import fastcheck
from hosttune import plan as plan_mod
from hosttune.errors import EXIT_LOCKED, HosttuneError, PolicyError
from hosttune.sysfs import HostFS

RUNTIME_AREAS = areas.RUNTIME  # kernel arguments are verified (reboot pending), never staged by the agent
LOCK_HELD = EXIT_LOCKED  # state.Lock's error (hosttune.errors.LockHeld) when another run holds it
MAX_NAMES = 20  # setting names per area in a log line
MAX_ROWS = 50  # drifted rows in /status


def _lock_held(exc: HosttuneError) -> bool:
    # by exit code: it holds for the LockHeld class and for a plain HosttuneError(exit_code=4),
    # and for the error as it comes back from a child (hosttune.agent.worker.run rebuilds it)
    return exc.exit_code == LOCK_HELD


class WorkerFailed(HosttuneError):
    """The child died or timed out without a result."""

    exit_code = 1


# -- fork/collect --------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self, records: list[dict[str, str]]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            message = str(record.msg)
        self.records.append({"logger": record.name, "level": record.levelname.lower(), "msg": message})


def _child(fn: Callable[..., Any], args: tuple[Any, ...], out: int) -> None:
    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        records: list[dict[str, str]] = []
        root = logging.getLogger()
        root.handlers = [_Collect(records)]
        try:
            payload: dict[str, Any] = {"result": fn(*args)}
        except HosttuneError as exc:
            payload = {"error": {"type": type(exc).__name__, "message": exc.message, "where": exc.where,
                                 "exit_code": exc.exit_code}}
        except BaseException as exc:  # noqa: BLE001 - reported to the daemon, which keeps running
            payload = {"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": 1,
                                 "traceback": traceback.format_exc(limit=12)}}
        payload["logs"] = records
        payload["max_rss_kb"] = _max_rss_kb()
        view = memoryview(json.dumps(payload, default=str, separators=(",", ":")).encode())
        while view:
            view = view[os.write(out, view):]
    except BaseException:  # noqa: BLE001 - nothing sensible left to do in the child
        code = 70
    finally:
        os._exit(code)


def _max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(fn: Callable[..., Any], *args: Any, timeout: float, tick: Callable[[], None] | None = None,
        tick_every: float | None = None) -> tuple[Any, list[dict[str, str]], int]:
    """fn(*args) in a forked child -> (its JSON-able result, its log records, its peak RSS in kB).
    A HosttuneError in the child is raised here again (same type for PolicyError and ApplyFailed).
    `tick` runs every `tick_every` seconds while waiting (the systemd watchdog)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(fn, args, w)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic() + tick_every if tick and tick_every else float("inf")
    killed = False
    try:
        while True:
            now = time.monotonic()
            if now >= next_tick and tick:
                tick()
                next_tick = now + (tick_every or 0)
            if now >= deadline:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            ready, _, _ = select.select([r], [], [], max(0.0, min(deadline, next_tick) - now))
            if ready:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if killed:
        raise WorkerFailed(f"the check process (pid {pid}) did not finish in {timeout:g} s and was killed (an "
                           f"apply it left half done is rolled back by the next one)")
    if not chunks:
        how = (f"signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
               if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}")
        raise WorkerFailed(f"the check process died ({how}) without a result")
    payload = json.loads(b"".join(chunks))
    error = payload.get("error")
    if error:
        cls = {"PolicyError": PolicyError, "ApplyFailed": engine.ApplyFailed}.get(error["type"], HosttuneError)
        # a HosttuneError carries `where`; anything else is a bug, shown with its type
        message = error["message"] if "where" in error else f"{error['type']}: {error['message']}"
        exc = cls(message, where=error.get("where"), exit_code=error.get("exit_code"))
        exc.traceback = error.get("traceback")  # type: ignore[attr-defined]
        exc.logs = payload.get("logs", [])  # type: ignore[attr-defined]
        raise exc
    return payload["result"], payload.get("logs", []), payload.get("max_rss_kb", 0)


# -- the work ---------------------------------------------------------------------------------------------
def topology_seen(fs: HostFS) -> tuple[list[str], str | None]:
    """What the fast check compares: the IRQ numbers and the online CPU list."""
    return [e for e in fs.listdir("/proc/irq") or () if numbers.is_uint(e)], fs.read(f"{discovery.CPU}/online")


def trial_plan(root: str, policy: dict[str, Any], keep: bool = False, current: str | None = None) -> dict[str, Any]:
    """Can `policy` be planned on this host? With `keep`, the plan's JSON and what the fast check
    compares come back too, for the check that follows (at start: one discovery instead of two),
    unless the plan is `current` (the daemon's plan JSON): then only {"same": True} comes back,
    and the daemon does not parse 0.3 MB it already holds."""
    fs = HostFS(root=root)
    plan = plan_mod.make_plan(discovery.discover(fs), policy)
    out: dict[str, Any] = {"hostname": plan["hostname"], "profile": plan["profile"],
                           "housekeeping": plan["housekeeping"]}
    if keep:
        plan_json = json.dumps(plan, separators=(",", ":"))
        if plan_json == current:  # the daemon keeps what it saw; its next fast check lists /proc/irq
            return {**out, "same": True}
        irqs, online = topology_seen(fs)
        out.update(plan_json=plan_json, topology={"irqs": irqs, "online": online})
    return out


def recover(root: str) -> dict[str, Any]:
    """Roll back an apply killed midway, under the lock. {"locked": True} when another run holds it."""
    fs = HostFS(root=root)
    try:
        with state.Lock(fs, wait=0):
            st = state.load(fs)
            if not st.run:
                return {"restored": []}
            run = st.run
            return {"restored": engine.recover(fs, st), "pid": run.get("pid"), "started": run.get("started")}
    except HosttuneError as exc:
        if not _lock_held(exc):
            raise
        return {"locked": True, "detail": str(exc)}


def _key(area: str, name: str) -> int:
    # hashes stand in for (area, name) pairs in the daemon (8 bytes each instead of two strings);
    # str hashes are salted per process, and every check is a fork of the same daemon, so they agree
    return hash((area, name))


def _ok_keys(report: dict[str, Any]) -> list[int]:
    return [_key(r["area"], r["name"]) for r in report["settings"] if r["status"] == "ok"]


def check(root: str, policy: dict[str, Any], plan: dict[str, Any] | str | None, prev_ok: frozenset[int],
          reapply: bool, apply: bool = True) -> dict[str, Any]:
    """One full check: (re)plan if no plan is given, verify, re-apply drifted runtime areas, verify
    again. Returns the summary the daemon turns into metrics, status and log lines. The plan is a
    dict or its JSON text (what the daemon keeps of it on big hosts).

    With apply=False (the daemon's own cheap path, no fork) it stops before writing: when something
    needs re-applying the summary only says {"needs_apply": True}, and the daemon runs the check
    again in a child."""
    if isinstance(plan, str):
        plan = json.loads(plan)
    fs = HostFS(root=root)
    try:
        lock = state.Lock(fs, wait=0).__enter__()
    except HosttuneError as exc:
        if not _lock_held(exc):
            raise
        return {"locked": True, "phase": "verify", "detail": str(exc)}
    out: dict[str, Any] = {"locked": False}
    try:
        if plan is None:
            plan = plan_mod.make_plan(discovery.discover(fs), policy)
            irqs, online = topology_seen(fs)  # discovery's reads, from its cache
            out["plan_json"] = json.dumps(plan, separators=(",", ":"))
            out["topology"] = {"irqs": irqs, "online": online}
            fs.forget()  # the record below holds verify's inputs only, not discovery's
        report, out["inputs"] = _verify(plan, fs)
        fix = sorted({r["area"] for r in report["settings"] if r["status"] == "drift"} & set(RUNTIME_AREAS))
        if fix and reapply and not apply:
            return {"locked": False, "needs_apply": True}
        out["drift"] = _drift(report, prev_ok)
        out["ok"] = _ok_keys(report)
        if fix and reapply:
            # the lock is held from verify to the verify after: apply takes the values verify read
            # (a 768-CPU host's first start writes ~8,000 files; not reading them twice saves ~10 %)
            applied = engine.apply_held(plan, fs, only=fix)
            out["applied"] = _applied(applied)
            fs.forget()  # apply's reads are not verify's inputs
            report, out["inputs"] = _verify(plan, fs)
            out["ok"] = _ok_keys(report)
    finally:
        lock.__exit__(None, None, None)
        fs.forget()

    out["settled"] = _drift(report, frozenset())  # the drift a check repeated now would find
    per_area: dict[str, dict[str, int]] = {}
    for row in report["settings"]:
        counts = per_area.setdefault(row["area"], {})
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    out.update({
        "hostname": plan["hostname"], "profile": plan["profile"], "kernel_args": plan["kernel_args"],
        # where to probe each instance is the plan's answer (probe_url), not the agent's
        "instances": [{"name": i["name"], "node": i["node"], "probe_url": i["probe_url"]}
                      for i in plan["instances"]],
        "status": report["status"], "counts": report["counts"], "reboot_required": report["reboot_required"],
        "areas": per_area,
        "drifted": [r for r in report["settings"] if r["status"] == "drift"][:MAX_ROWS],
    })
    return out


def _applied(applied: dict[str, Any]) -> dict[str, Any]:
    """engine.apply's report, as counts and a few names per area (the daemon's log lines and metrics)."""
    changes: dict[str, dict[str, Any]] = {}
    for change in applied["changes"]:
        entry = changes.setdefault(change["area"], {"count": 0, "names": []})
        entry["count"] += 1
        if len(entry["names"]) < MAX_NAMES:
            entry["names"].append(change["name"])
    return {"changes": changes, "recovered": applied.get("recovered", []),
            "refused": [u for u in applied["unsupported"] if u.get("name")],
            "commands": applied.get("commands", [])}


def _verify(plan: dict[str, Any], fs: HostFS) -> tuple[dict[str, Any], dict[str, Any]]:
    """engine.verify, and the record of its inputs for the daemon's fast check (hosttune.agent.fastcheck)."""
    with fastcheck.Recorder(fs) as rec:
        report = engine.verify(plan, fs)
    try:
        return report, fastcheck.record(fs, rec.queries)
    finally:
        fs.keep_raw(False)


def _drift(report: dict[str, Any], prev_ok: frozenset[int]) -> dict[str, dict[str, Any]]:
    drift: dict[str, dict[str, Any]] = {}
    for row in report["settings"]:
        if row["status"] == "drift":
            entry = drift.setdefault(row["area"], {"count": 0, "events": 0, "names": []})
            entry["count"] += 1
            entry["events"] += _key(row["area"], row["name"]) in prev_ok
            if len(entry["names"]) < MAX_NAMES:
                entry["names"].append(row["name"])
    return drift
