"""Run one piece of work per host on a bounded thread pool.

- at most `forks` hosts at a time (ThreadPoolExecutor(max_workers=forks); Fabric's ThreadingGroup
  would start one thread per host, with no cap and no timeout);
- every SSH step is bounded by the session's timeouts, so a dead or hung host only holds its own
  worker, never the others;
- progress (n/N done) on stderr as hosts finish;
- Ctrl-C: pending hosts are cancelled, open SSH connections are closed (which unblocks the workers
  stuck in them), workers get a short grace period, and the hosts that finished are reported with
  the rest marked `cancelled`.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from hosttune.fleet.inventory import FleetHost
from hosttune.fleet.ssh import HostFailure, Options, Session

log = logging.getLogger(__name__)

THREAD_PREFIX = "fleet"  # the worker threads' names (the CLI looks for stuck ones at exit)
GRACE_S = 3.0  # after Ctrl-C, how long running hosts get to notice their closed connection


@dataclass
class HostResult:
    host: FleetHost
    status: str  # ok | drift | pending-reboot | unreachable | failed | invalid | cancelled
    reason: str | None = None
    elapsed_s: float = 0.0
    exit_code: int | None = None  # the remote hosttune's exit code, when it ran
    result: Any = None  # the command's JSON document (plan/1, verify/1, bench/1)
    detail: dict[str, Any] = field(default_factory=dict)  # command-specific extras (capture path...)


class Context:
    """What a work function gets: its host, the options, and SSH sessions that Ctrl-C can abort."""

    def __init__(self, host: FleetHost, options: Options, cancel: threading.Event,
                 sessions: set[Session], lock: threading.Lock):
        self.host = host
        self.options = options
        self.cancel = cancel
        self._sessions = sessions
        self._lock = lock

    def session(self) -> _OpenSession:
        return _OpenSession(self)


class _OpenSession:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.session = Session(ctx.host, ctx.options, ctx.cancel)

    def __enter__(self) -> Session:
        with self.ctx._lock:
            self.ctx._sessions.add(self.session)
        self.session.open()
        return self.session

    def __exit__(self, *exc: Any) -> None:
        self.session.close()
        with self.ctx._lock:
            self.ctx._sessions.discard(self.session)


Work = Callable[[Context], HostResult]


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None):
        self.label, self.total, self.stream, self.done = label, total, stream, 0

    def start(self, forks: int) -> None:
        self._say(f"{self.total} host(s), forks {forks}")

    def finished(self, r: HostResult) -> None:
        self.done += 1
        why = f": {r.reason}" if r.reason and r.status not in ("ok",) else ""
        self._say(f"{self.done}/{self.total} done  {r.host.name} {r.status} ({r.elapsed_s:.1f}s){why}")

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(f"fleet {self.label}: {text}", file=self.stream, flush=True)


def run(hosts: list[FleetHost], work: Work, *, forks: int, options: Options, label: str,
        progress: TextIO | None = sys.stderr) -> tuple[list[HostResult], bool]:
    """(results in inventory order, interrupted). Never raises for a host's failure."""
    _log_stray_thread_errors()
    cancel = threading.Event()
    sessions: set[Session] = set()
    lock = threading.Lock()
    prog = Progress(label, len(hosts), progress)
    prog.start(forks)
    results: dict[str, HostResult] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, forks), thread_name_prefix=THREAD_PREFIX)
    futures: dict[Future[HostResult], FleetHost] = {}
    with _CtrlC() as ctrl_c:
        try:
            for h in hosts:
                futures[pool.submit(_guarded, work, Context(h, options, cancel, sessions, lock))] = h
            pending = set(futures)
            while pending and not ctrl_c.pressed:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    r = fut.result()
                    results[r.host.name] = r
                    prog.finished(r)
            if ctrl_c.pressed:
                _stop(futures, results, cancel, sessions, lock, ctrl_c)
                if progress is not None:
                    finished = sum(1 for r in results.values() if r.status != "cancelled")
                    print(f"fleet {label}: interrupted: {finished}/{len(hosts)} host(s) finished",
                          file=progress, flush=True)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return [results[h.name] for h in hosts], ctrl_c.pressed > 0


def _stop(futures: dict[Future[HostResult], FleetHost], results: dict[str, HostResult],
          cancel: threading.Event, sessions: set[Session], lock: threading.Lock, ctrl_c: _CtrlC) -> None:
    """Cancel what has not started, close open connections, give running hosts a grace period
    (a second Ctrl-C ends it), then mark every host without a result as cancelled."""
    cancel.set()
    for fut in futures:
        fut.cancel()  # not started yet: never will
    with lock:
        open_now = list(sessions)
    for s in open_now:
        s.close()
    deadline = time.monotonic() + GRACE_S
    running = {f for f in futures if not f.cancelled() and futures[f].name not in results}
    while running and ctrl_c.pressed < 2 and time.monotonic() < deadline:
        _, running = wait(running, timeout=0.1)
    for fut, h in futures.items():
        if h.name in results:
            continue
        if fut.done() and not fut.cancelled():
            results[h.name] = fut.result()  # finished, or noticed its closed connection: cancelled
        else:
            state = "before it started" if fut.cancelled() else "while running"
            results[h.name] = HostResult(h, "cancelled", f"interrupted (Ctrl-C) {state}")


class _CtrlC:
    """Counts SIGINTs instead of raising KeyboardInterrupt: an exception raised at a random point
    of the main thread can leave a future's lock held (concurrent.futures.wait holds them all while
    it registers), and then cancelling that future would hang. Outside the main thread (no signal
    handler can be set there) it does nothing."""

    def __init__(self) -> None:
        self.pressed = 0
        self._previous: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.pressed += 1

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _log_stray_thread_errors() -> None:
    """Paramiko's and invoke's helper threads may die with EOFError/OSError when a timed-out or
    cancelled connection is closed under them; the host's result already says what happened, so
    their traceback goes to the debug log (-v), not onto the operator's console."""
    if threading.excepthook is not threading.__excepthook__:
        return  # somebody else's hook (or ours, already): leave it

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        log.debug("thread %s ended with %s: %s", name, args.exc_type.__name__, args.exc_value,
                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    threading.excepthook = hook


def _guarded(work: Work, ctx: Context) -> HostResult:
    start = time.monotonic()
    try:
        if ctx.cancel.is_set():
            return HostResult(ctx.host, "cancelled", "interrupted (Ctrl-C) before it started")
        r = work(ctx)
    except HostFailure as exc:
        detail = dict(exc.detail)
        r = HostResult(ctx.host, exc.status, exc.reason, exit_code=detail.pop("exit_code", None), detail=detail)
    except Exception as exc:  # noqa: BLE001 - one host's bug must not take the fleet down
        log.debug("fleet work failed on %s", ctx.host.name, exc_info=True)
        r = HostResult(ctx.host, "failed", f"internal error: {type(exc).__name__}: {exc}")
    r.elapsed_s = round(time.monotonic() - start, 3)
    return r
