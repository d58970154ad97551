"""apply / verify / restore: carry a plan's Items onto a host, check them, and take them back.

Written once for every area (hosttune.areas): Items read, compare, apply and put themselves back;
an area's `refresh` names the commands that make its changed files take effect.

A run is a transaction: the values about to change are journalled in the state file before the
first write; if a write or a command fails, what this run changed is put back. A dry run walks the
same path with writes left out and commands only recorded. Commands run only against the live
root "/" (hosttune.runner).
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import time
from typing import Any

from hosttune import areas, state
from hosttune.areas.base import AreaItems, CommandFailed, Host, Item, put_back
from hosttune.errors import HosttuneError
from hosttune.runner import Runner
from hosttune.sysfs import HostFS

log = logging.getLogger("hosttune.engine")


class ApplyFailed(HosttuneError):
    exit_code = 1


def _host(fs: HostFS, dry: bool = False) -> Host:
    return Host(fs, Runner(live=fs.is_live, dry=dry))


def _host_path(fs: HostFS, path: str) -> str:
    return path if fs.is_live else os.path.join(fs.root, path.lstrip("/"))


def _by_area(records: list[dict[str, Any]]) -> list[tuple[Any, list[dict[str, Any]]]]:
    """(area module, its records) for every area with records, in registry order."""
    by_area: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_area.setdefault(record.get("area", ""), []).append(record)
    # records written before they named their area: any area may claim them
    return [(area, mine) for area in areas.REGISTRY
            if (mine := by_area.get(area.NAME, []) + by_area.get("", []))]


def _refresh(host: Host, records: list[dict[str, Any]], strict: bool) -> None:
    """Run the commands that make changed files take effect, area by area, in registry order."""
    for area, mine in _by_area(records):
        for action in area.refresh(host, mine):
            if not host.runner.run(action.argv, action.why, env=action.env):
                if strict:
                    raise ApplyFailed(host.runner.last_error(), where=action.area)
                log.error("%s", host.runner.last_error())


def _put_back_all(host: Host, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Put records back, last first; an EINVAL is retried once the others are back (a minimum
    above the restored maximum). Returns (restored, failed with their error)."""
    restored, failed, retry = [], [], []
    for record in reversed(records):
        try:
            put_back(host, record)
            restored.append(record)
        except OSError as exc:
            (retry if exc.errno == errno_mod.EINVAL else failed).append((record, exc))
        except CommandFailed as exc:
            failed.append((record, exc))
    for record, _ in list(retry):
        try:
            put_back(host, record)
            restored.append(record)
        except (OSError, CommandFailed) as exc:
            failed.append((record, exc))
    return restored, [{"path": r["path"], "error": _reason(e)} for r, e in failed]


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc)


def recover(fs: HostFS, st: state.State) -> list[str]:
    """Roll back an apply that was killed midway (its journal is still in the state file)."""
    if not st.run:
        return []
    host = _host(fs)
    # journals written before records named their value kept it under "before"
    records = [{**r, "value": r.get("value", r.get("before"))} for r in st.run.get("changes", [])]
    for record in records:
        if record["kind"] == "file":
            _remove_temp_files(fs, record["path"])
    restored, failed = _put_back_all(host, records)
    for f in failed:
        log.warning("recover: cannot put back %s: %s", f["path"], f["error"])
    st.run = None
    state.save(fs, st)
    _refresh(host, restored, strict=False)
    return [r["path"] for r in reversed(restored)]


def _remove_temp_files(fs: HostFS, path: str) -> None:
    """A kill during an atomic write leaves its temp file; the journal says where to look."""
    folder, _, name = path.rpartition("/")
    for entry in fs.listdir(folder) or []:
        if entry.startswith(name + ".hosttune-tmp."):
            fs.remove(f"{folder}/{entry}")


# -- apply ----------------------------------------------------------------------------------------
def apply(plan: dict[str, Any], fs: HostFS, dry_run: bool = False, only: list[str] | None = None,
          lock_wait: float = 30.0) -> dict[str, Any]:
    if dry_run:
        return _apply_locked(plan, fs, _host(fs, dry=True), only)
    with state.Lock(fs, wait=lock_wait):
        return _apply_locked(plan, fs, _host(fs), only)


def apply_held(plan: dict[str, Any], fs: HostFS, only: list[str] | None = None) -> dict[str, Any]:
    """apply, for a caller that holds the state lock and has just read the host through `fs` (the
    agent's check: verify, then apply what drifted): the values read under that lock stand."""
    return _apply_locked(plan, fs, _host(fs), only, reread=False)


def _apply_locked(plan: dict[str, Any], fs: HostFS, host: Host, only: list[str] | None,
                  reread: bool = True) -> dict[str, Any]:
    st = state.load(fs)
    recovered = [] if host.dry else recover(fs, st)
    if reread or recovered:
        fs.forget()
    selected = areas.build(plan, host, only)
    refused = dict(st.refused)  # key -> why the host refused its write; not retried
    pending: list[tuple[Item, str | None, dict[str, Any]]] = []
    unsupported = []
    for area in selected:
        if area.unsupported:
            unsupported.append({"area": area.area, "reason": area.unsupported})
        for item in area.items:
            raw = item.read(host)
            if raw is None and item.must_exist:
                unsupported.append({"area": item.area, "name": item.name, "reason": item.missing_reason()})
                continue
            if item.key in refused or item.matches(raw):
                continue
            pending.append((item, raw, {}))

    report: dict[str, Any] = {
        "schema": "hosttune.apply/1", "hostname": plan["hostname"], "dry_run": host.dry,
        "recovered": recovered, "unsupported": unsupported,
        "changes": [{"area": i.area, "name": i.name, "path": i.path, "before": i.shown(raw), "after": i.expected(),
                     "diff": i.diff(raw)} for i, raw, _ in pending],
    }
    if host.dry:
        for item, _, _ in pending:
            item.apply(host)  # records the commands it would run; writes nothing
        _refresh(host, [{"area": i.area, "path": i.path} for i, _, _ in pending], strict=False)
        return _finish(report, plan, fs, host, selected, changed=bool(pending))

    try:
        pending = [(item, raw, item.snapshot(host, raw)) for item, raw, _ in pending]
    except OSError as exc:  # an original that cannot be saved whole is not overwritten
        raise ApplyFailed(f"cannot save the original before changing it: {exc.strerror}",
                          where=_host_path(fs, exc.filename or "/")) from None
    new_keys = {i.key for i, _, _ in pending} - set(st.originals)
    for item, _, record in pending:
        st.originals.setdefault(item.key, record)
    st.run = {"pid": os.getpid(), "started": time.time(), "changes": [record for _, _, record in pending]}
    state.save(fs, st)

    done: list[dict[str, Any]] = []
    try:
        for item, _, record in pending:
            try:
                item.apply(host)
            except OSError as exc:
                reason = item.unsupported_errnos.get(exc.errno or 0)
                if reason is None:
                    raise ApplyFailed(f"cannot write {item.area} ({item.name}): {exc.strerror} "
                                      f"(errno {exc.errno} {errno_mod.errorcode.get(exc.errno or 0, '')})",
                                      where=_host_path(fs, exc.filename or item.path)) from None
                unsupported.append({"area": item.area, "name": item.name, "reason": reason})
                if item.remember_refusal:
                    refused[item.key] = reason
                if item.key in new_keys:
                    st.originals.pop(item.key)  # never changed, so nothing to restore
                continue
            except CommandFailed as exc:
                raise ApplyFailed(str(exc), where=item.area) from None
            done.append(record)
        _refresh(host, done, strict=True)
    except ApplyFailed:
        _rollback(host, done)
        for key in new_keys:
            st.originals.pop(key, None)  # back to the value found before this run
        st.run = None
        st.refused = refused
        state.save(fs, st)
        raise
    st.run = None
    st.refused = refused
    state.save(fs, st)
    changed = {r["path"] for r in done}
    report["changes"] = [c for c in report["changes"] if c["path"] in changed]
    return _finish(report, plan, fs, host, selected, changed=bool(done))


def _rollback(host: Host, done: list[dict[str, Any]]) -> None:
    restored, failed = _put_back_all(host, done)
    for f in failed:
        log.error("rollback: cannot put back %s: %s", f["path"], f["error"])
    _refresh(host, restored, strict=False)


def _finish(report: dict[str, Any], plan: dict[str, Any], fs: HostFS, host: Host,
            selected: list[AreaItems], changed: bool) -> dict[str, Any]:
    fs.forget()
    names = {a.area for a in selected}
    report["changed"] = changed
    report["commands"] = host.runner.ran
    report["reboot_required"] = any(area.reboot_required(plan, fs) for area in areas.REGISTRY if area.NAME in names)
    return report


# -- verify ---------------------------------------------------------------------------------------
def verify(plan: dict[str, Any], fs: HostFS, only: list[str] | None = None) -> dict[str, Any]:
    st = state.load(fs)
    refused = st.refused
    host = _host(fs)
    rows: list[dict[str, Any]] = []
    for area in areas.build(plan, host, only):
        if area.unsupported:
            rows.append(_row(area.area, area.area, "-", "-", "unsupported", area.unsupported))
        for item in area.items:
            raw = item.read(host)
            if raw is None and item.must_exist:
                rows.append(_row(item.area, item.name, item.expected(), None, "unsupported", item.missing_reason()))
                continue
            if item.matches(raw):
                status, reason = "ok", None
            elif item.key in refused:
                status, reason = "unsupported", f"{refused[item.key]} (write refused, not retried)"
            else:
                status, reason = "drift", None
            rows.append(_row(item.area, item.name, item.expected(), item.shown(raw), status, reason))
        rows.extend(areas.get(area.area).verify_rows(plan, host, _row))
    counts = {k: sum(1 for r in rows if r["status"] == k) for k in ("ok", "drift", "unsupported", "pending-reboot")}
    overall = "drift" if counts["drift"] else ("pending-reboot" if counts["pending-reboot"] else "ok")
    return {"schema": "hosttune.verify/1", "hostname": plan["hostname"], "status": overall,
            "reboot_required": counts["pending-reboot"] > 0, "counts": counts, "settings": rows}


def _row(area: str, name: str, expected: Any, actual: Any, status: str, reason: str | None) -> dict[str, Any]:
    row = {"area": area, "name": name, "expected": expected, "actual": actual, "status": status}
    if reason:
        row["reason"] = reason
    return row


# -- restore --------------------------------------------------------------------------------------
def restore(fs: HostFS, lock_wait: float = 30.0) -> dict[str, Any]:
    host = _host(fs)
    with state.Lock(fs, wait=lock_wait):
        st = state.load(fs)
        recovered = recover(fs, st)
        restored, failed = _put_back_all(host, list(st.originals.values()))
        _refresh(host, restored, strict=False)
        failed_paths = {f["path"] for f in failed}
        st.originals = {k: v for k, v in st.originals.items() if v["path"] in failed_paths}
        if st.originals:
            state.save(fs, st)
        else:
            fs.remove(state.STATE_FILE)
    # each area says whether what it put back waits for a reboot (a boot configuration does)
    reboot = any(area.reboot_after_restore(host, mine) for area, mine in _by_area(restored))
    return {"schema": "hosttune.restore/1", "recovered": recovered,
            "restored": sorted(r["path"] for r in restored), "failed": failed, "commands": host.runner.ran,
            "reboot_required": reboot}
