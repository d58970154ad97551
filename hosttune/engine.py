"""apply / verify / restore: carry a plan's Items onto a host, check them, and take them back.

A run is a transaction: the values about to change are journalled in the state file before the
first write; if a write fails, what this run changed is put back. Commands (update-grub,
systemctl) run only against the live root "/"; under another root they are reported as skipped.
"""

from __future__ import annotations

import difflib
import errno as errno_mod
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from hosttune import settings, state
from hosttune.errors import HosttuneError
from hosttune.settings import Action, AreaItems, Item
from hosttune.sysfs import HostFS

log = logging.getLogger("hosttune.engine")


class ApplyFailed(HosttuneError):
    exit_code = 1


@dataclass
class Runner:
    """Runs host commands, only on the live root. `dry` records instead of running."""

    live: bool
    dry: bool = False
    ran: list[dict[str, Any]] = field(default_factory=list)

    def run(self, argv: list[str], why: str) -> bool:
        entry: dict[str, Any] = {"argv": argv, "why": why}
        self.ran.append(entry)
        if self.dry:
            entry["result"] = "dry-run"
            return True
        if not self.live:
            entry["result"] = "skipped: not the live root"
            return True
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        except FileNotFoundError:
            entry["result"] = f"not found: {argv[0]}"
            return False
        except subprocess.TimeoutExpired:
            entry["result"] = "timed out after 300 s"
            return False
        entry["result"] = f"exit {proc.returncode}"
        if proc.returncode != 0:
            entry["stderr"] = (proc.stderr or proc.stdout).strip()[-2000:]
        return proc.returncode == 0

    def query(self, argv: list[str]) -> str | None:
        if not self.live:
            return None
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None


def _select(areas: list[AreaItems], only: list[str] | None) -> list[AreaItems]:
    return [a for a in areas if not only or a.area in only]


def _preflight(fs: HostFS, areas: list[AreaItems]) -> None:
    """Checks that must pass before anything is written."""
    for area in areas:
        if area.area == "kernel_args" and area.items:
            if not fs.exists("/etc/default/grub"):
                raise HosttuneError("missing: cannot stage kernel arguments without the GRUB defaults file",
                                    where=_host_path(fs, "/etc/default/grub"))


def _host_path(fs: HostFS, path: str) -> str:
    return path if fs.is_live else os.path.join(fs.root, path.lstrip("/"))


def _diff(item: Item, before: str | None) -> str:
    if item.kind != "file":
        return f"{item.path}: {before!r} -> {item.expected()!r}"
    return "".join(difflib.unified_diff((before or "").splitlines(True), (item.value or "").splitlines(True),
                                        fromfile=item.path if before is not None else "/dev/null",
                                        tofile=item.path if item.value is not None else "/dev/null"))


def recover(fs: HostFS, st: state.State) -> list[str]:
    """Roll back an apply that was killed midway (its journal is still in the state file)."""
    if not st.run:
        return []
    restored = []
    for change in reversed(st.run.get("changes", [])):
        if change["kind"] == "file":
            _remove_temp_files(fs, change["path"])
        try:
            _write_raw(fs, change["path"], change["kind"], change["before"])
            restored.append(change["path"])
        except OSError as exc:
            log.warning("recover: cannot put back %s: %s", change["path"], exc.strerror)
    st.run = None
    state.save(fs, st)
    _after_restore(fs, Runner(live=fs.is_live), set(restored))
    return restored


def _after_restore(fs: HostFS, runner: Runner, paths: set[str]) -> None:
    """Commands that make restored config files take effect (shared by recover and restore)."""
    if settings.GRUB_DROPIN in paths:
        runner.run(["update-grub"], "regenerate the boot config without hosttune's arguments")
    if any(p.endswith("/irqbalance") for p in paths):
        runner.run(["systemctl", "try-restart", "irqbalance"], "irqbalance rereads its configuration")


def _remove_temp_files(fs: HostFS, path: str) -> None:
    """A kill during an atomic write leaves its temp file; the journal says where to look."""
    folder, _, name = path.rpartition("/")
    for entry in fs.listdir(folder) or []:
        if entry.startswith(name + ".hosttune-tmp."):
            fs.remove(f"{folder}/{entry}")


def _write_raw(fs: HostFS, path: str, kind: str, value: str | None) -> None:
    if kind == "file":
        if value is None:
            fs.remove(path)
        else:
            fs.write_file_atomic(path, value if value.endswith("\n") else value + "\n")
    elif value is not None:
        fs.write(path, value)


def apply(plan: dict[str, Any], fs: HostFS, dry_run: bool = False, only: list[str] | None = None,
          lock_wait: float = 30.0) -> dict[str, Any]:
    runner = Runner(live=fs.is_live, dry=dry_run)
    if dry_run:
        return _apply_locked(plan, fs, runner, True, only)
    with state.Lock(fs, wait=lock_wait):
        return _apply_locked(plan, fs, runner, False, only)


def _apply_locked(plan: dict[str, Any], fs: HostFS, runner: Runner, dry_run: bool,
                  only: list[str] | None) -> dict[str, Any]:
    st = state.load(fs)
    recovered = [] if dry_run else recover(fs, st)
    fs.forget()
    areas = _select(settings.build(plan, fs), only)
    _preflight(fs, areas)
    immovable = set(st.extras.get("immovable_irqs", []))
    pending: list[tuple[Item, str | None]] = []
    unsupported = []
    for area in areas:
        if area.unsupported:
            unsupported.append({"area": area.area, "reason": area.unsupported})
        for item in area.items:
            raw = item.read(fs)
            if item.kind == "sysfs" and raw is None:
                unsupported.append({"area": item.area, "name": item.name, "reason": f"{item.path} does not exist"})
                continue
            if item.path in immovable or item.matches(raw):
                continue
            pending.append((item, item.original(fs)))
    service_changes = _service_changes(areas, runner, st)

    report: dict[str, Any] = {
        "schema": "hosttune.apply/1", "hostname": plan["hostname"], "dry_run": dry_run,
        "recovered": recovered, "unsupported": unsupported,
        "changes": [{"area": i.area, "name": i.name, "path": i.path, "before": i.normalize(b) if i.kind != "file" else b,
                     "after": i.expected(), "diff": _diff(i, b)} for i, b in pending],
    }
    if dry_run:
        for action in service_changes:
            runner.run(action.argv, action.why)
        for area in _changed_areas(areas, [i for i, _ in pending]):
            for action in area.actions:
                if action.undo_argv is None:
                    runner.run(action.argv, action.why)
        return _finish(report, plan, fs, runner, areas, changed=bool(pending or service_changes))

    new_keys = {i.key for i, _ in pending} - set(st.originals)
    for item, before in pending:
        st.originals.setdefault(item.key, {"path": item.path, "kind": item.kind, "value": before})
    st.run = {"pid": os.getpid(), "started": time.time(),
              "changes": [{"path": i.path, "kind": i.kind, "before": b if i.kind == "file" or i.restore_raw
                           else i.normalize(b)} for i, b in pending]}
    state.save(fs, st)

    done: list[tuple[Item, str | None]] = []
    try:
        for item, before in pending:
            try:
                item.write(fs, item.value)
            except OSError as exc:
                reason = item.unsupported_errnos.get(exc.errno or 0)
                if reason is None:
                    raise ApplyFailed(f"cannot write {item.area} ({item.name}): {exc.strerror} "
                                      f"(errno {exc.errno} {errno_mod.errorcode.get(exc.errno or 0, '')})",
                                      where=_host_path(fs, exc.filename or item.path)) from None
                unsupported.append({"area": item.area, "name": item.name, "reason": reason})
                if item.area == "irqs":
                    immovable.add(item.path)
                if item.key in new_keys:
                    st.originals.pop(item.key)  # never changed, so nothing to restore
                continue
            done.append((item, before))
        for area in _changed_areas(areas, [i for i, _ in done]):
            for action in area.actions:
                if action.undo_argv is None and not runner.run(action.argv, action.why):
                    last = runner.ran[-1]
                    raise ApplyFailed(f"`{' '.join(action.argv)}` failed ({last['result']}): "
                                      f"{last.get('stderr', '')}".strip(), where=area.area)
        for action in service_changes:
            if not runner.run(action.argv, action.why):
                raise ApplyFailed(f"`{' '.join(action.argv)}` failed: {runner.ran[-1].get('stderr', '')}",
                                  where=action.area)
    except ApplyFailed:
        _rollback(fs, done, runner)
        for key in new_keys:
            st.originals.pop(key, None)  # back to the value found before this run
        st.run = None
        st.extras["immovable_irqs"] = sorted(immovable)
        state.save(fs, st)
        raise
    st.run = None
    st.extras["immovable_irqs"] = sorted(immovable)
    state.save(fs, st)
    report["changes"] = [c for c in report["changes"] if c["path"] in _keys(done)]
    return _finish(report, plan, fs, runner, areas, changed=bool(done or service_changes))


def _keys(done: list[tuple[Item, str | None]]) -> set[str]:
    return {i.key for i, _ in done}


def _rollback(fs: HostFS, done: list[tuple[Item, str | None]], runner: Runner) -> None:
    for item, before in reversed(done):
        try:
            _write_raw(fs, item.path, item.kind, before if item.kind == "file" or item.restore_raw else item.normalize(before))
        except OSError as exc:
            log.error("rollback: cannot put back %s: %s", item.path, exc.strerror)
    for area_name in {i.area for i, _ in done}:
        if area_name == "kernel_args":
            runner.run(["update-grub"], "regenerate the boot config after rollback")


def _changed_areas(areas: list[AreaItems], changed: list[Item]) -> list[AreaItems]:
    names = {i.area for i in changed}
    return [a for a in areas if a.area in names]


def _service_changes(areas: list[AreaItems], runner: Runner, st: state.State) -> list[Action]:
    """Actions for areas expressed as a service state (irqbalance stop), due when not in that state."""
    due = []
    for area in areas:
        for action in area.actions:
            if action.undo_argv is None or area.area != "irqbalance":
                continue
            active = runner.query(["systemctl", "is-active", "irqbalance"])
            if active is None or active == "active":
                services = st.extras.setdefault("services", {})
                services.setdefault("irqbalance", {"active": active == "active",
                                                   "enabled": runner.query(["systemctl", "is-enabled", "irqbalance"]) == "enabled"})
                due.append(action)
    return due


def _finish(report: dict[str, Any], plan: dict[str, Any], fs: HostFS, runner: Runner,
            areas: list[AreaItems], changed: bool) -> dict[str, Any]:
    fs.forget()
    kernel = any(a.area == "kernel_args" for a in areas)
    report["changed"] = changed
    report["commands"] = runner.ran
    report["reboot_required"] = kernel and bool(plan["kernel_args"]) and bool(settings.cmdline_missing(plan, fs))
    return report


# -- verify -------------------------------------------------------------------------------------
def verify(plan: dict[str, Any], fs: HostFS, only: list[str] | None = None) -> dict[str, Any]:
    st = state.load(fs)
    immovable = set(st.extras.get("immovable_irqs", []))
    runner = Runner(live=fs.is_live)
    rows: list[dict[str, Any]] = []
    for area in _select(settings.build(plan, fs), only):
        if area.unsupported:
            rows.append(_row(area.area, area.area, "-", "-", "unsupported", area.unsupported))
        for item in area.items:
            raw = item.read(fs)
            if item.kind == "sysfs" and raw is None:
                rows.append(_row(item.area, item.name, item.expected(), None, "unsupported", f"{item.path} does not exist"))
                continue
            actual = item.normalize(raw)
            if item.matches(raw):
                status, reason = "ok", None
            elif item.path in immovable:
                status, reason = "unsupported", "kernel-managed IRQ (writes refused)"
            else:
                status, reason = "drift", None
            rows.append(_row(item.area, item.name, _short(item.expected()), _short(actual), status, reason))
        if area.area == "irqbalance" and not area.items and area.actions:
            active = runner.query(["systemctl", "is-active", "irqbalance"])
            rows.append(_row("irqbalance", "service", "inactive", active,
                             "unsupported" if active is None else ("ok" if active != "active" else "drift"),
                             "not the live root" if active is None else None))
        if area.area == "kernel_args":
            rows.extend(_boot_rows(plan, fs))
    counts = {k: sum(1 for r in rows if r["status"] == k) for k in ("ok", "drift", "unsupported", "pending-reboot")}
    overall = "drift" if counts["drift"] else ("pending-reboot" if counts["pending-reboot"] else "ok")
    return {"schema": "hosttune.verify/1", "hostname": plan["hostname"], "status": overall,
            "reboot_required": counts["pending-reboot"] > 0, "counts": counts, "settings": rows}


def _boot_rows(plan: dict[str, Any], fs: HostFS) -> list[dict[str, Any]]:
    from hosttune import cpulist

    missing = settings.cmdline_missing(plan, fs)
    rows = [_row("kernel_args", "running kernel command line", " ".join(plan["kernel_args"]) or "-",
                 "missing: " + " ".join(missing) if missing else "all present",
                 "pending-reboot" if missing else "ok", None)]
    if any(a.startswith("isolcpus=") for a in plan["kernel_args"]):
        actual = cpulist.format(cpulist.parse(fs.read(f"{settings.CPU}/isolated") or ""))
        expected = cpulist.format(plan["isolated"])
        status = "ok" if actual == expected else ("pending-reboot" if missing else "drift")
        rows.append(_row("kernel_args", "isolated CPUs", expected, actual or "-", status, None))
    return rows


def _short(value: str | None) -> str | None:
    if value is None:
        return None
    return value if "\n" not in value else f"<{len(value.splitlines())} lines>"


def _row(area: str, name: str, expected: Any, actual: Any, status: str, reason: str | None) -> dict[str, Any]:
    row = {"area": area, "name": name, "expected": expected, "actual": actual, "status": status}
    if reason:
        row["reason"] = reason
    return row


# -- restore ------------------------------------------------------------------------------------
def restore(fs: HostFS, lock_wait: float = 30.0) -> dict[str, Any]:
    runner = Runner(live=fs.is_live)
    with state.Lock(fs, wait=lock_wait):
        st = state.load(fs)
        recovered = recover(fs, st)
        entries = list(st.originals.items())
        restored, failed = [], []
        retry = []
        for key, orig in reversed(entries):
            try:
                _write_raw(fs, orig["path"], orig["kind"], orig["value"])
                restored.append(orig["path"])
            except OSError as exc:
                if exc.errno == errno_mod.EINVAL:
                    retry.append((key, orig))  # e.g. min above max until the other one is back
                else:
                    failed.append({"path": orig["path"], "error": f"{exc.strerror} (errno {exc.errno})"})
        for key, orig in retry:
            try:
                _write_raw(fs, orig["path"], orig["kind"], orig["value"])
                restored.append(orig["path"])
            except OSError as exc:
                failed.append({"path": orig["path"], "error": f"{exc.strerror} (errno {exc.errno})"})
        paths = set(restored)
        _after_restore(fs, runner, paths)
        service = st.extras.get("services", {}).get("irqbalance")
        if service and service.get("active"):
            runner.run(["systemctl", "enable" if service.get("enabled") else "start", "--now", "irqbalance"]
                       if service.get("enabled") else ["systemctl", "start", "irqbalance"], "irqbalance was running before")
        failed_paths = {f["path"] for f in failed}
        st.originals = {k: v for k, v in st.originals.items() if v["path"] in failed_paths}
        if st.originals:
            state.save(fs, st)
        else:
            fs.remove(state.STATE_FILE)
    return {"schema": "hosttune.restore/1", "recovered": recovered, "restored": sorted(paths),
            "failed": failed, "commands": runner.ran}
