"""The work each fleet command does for one host (run on a worker thread by `runner`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from typing import Any

from hosttune.errors import HosttuneError, PolicyError
from hosttune.fleet import bench as bench_collect
from hosttune.fleet.inventory import FleetHost, plain
from hosttune.fleet.runner import Context, HostResult
from hosttune.fleet.ssh import Failed, Output, Session, tail

NOT_FOUND = 127  # the shell's "command not found"


def file_stem(host: str) -> str:
    """A host's file name on the controller (captures, plans), one per host name: the name itself
    when it is a safe file name, else the name made safe plus '+' and a hash of the real name
    ('node-ä' and 'node-ö' both made 'node-_' overwrote each other's files). A safe name has no
    '+', so the two forms cannot meet."""
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", host).lstrip(".")[:200] or "_"
    if safe == host:
        return safe
    return f"{safe}+{hashlib.sha256(host.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def capture_file(out_dir: str, host: str) -> str:
    """Where a host's capture lives on the controller: DIR/<file_stem(host)>.tar.gz."""
    return os.path.join(out_dir, f"{file_stem(host)}.tar.gz")


def _remote_failure(what: str, host: FleetHost, out: Output) -> Failed:
    if out.exit_code == NOT_FOUND:
        return Failed(f"hosttune_command {host.command!r} not found on the host ({tail(out.stderr, 1)})",
                      {"exit_code": out.exit_code, "stderr": tail(out.stderr)})
    why = tail(out.stderr) or tail(out.stdout) or "no output"
    return Failed(f"{what} exited {out.exit_code}: {why}", {"exit_code": out.exit_code, "stderr": tail(out.stderr, 10)})


def _json(out: Output) -> dict[str, Any] | None:
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _run_with_policy(s: Session, host: FleetHost, args: list[str]) -> Output:
    """Run hosttune with `args` plus --policy: the host's inventory policy, uploaded to a temp file
    (put), removed by the same remote command line. Without hosttune_policy, no --policy: the host's
    own default applies (its /etc/hosttune/hosttune.yaml, else the embedded default)."""
    if host.policy_raw is None:
        return s.run(s.hosttune(args))
    import yaml

    path = s.temp_path("hosttune-policy", ".yaml")
    try:
        s.put_text(yaml.safe_dump(plain(host.policy_raw), sort_keys=False), path)
        return s.run(s.then_remove(s.hosttune(args + ["--policy", path]), path))
    except Exception:
        s.remove(path)  # timed out or upload failed: best effort (skipped after Ctrl-C)
        raise


# -- capture -------------------------------------------------------------------------------------
def capture(ctx: Context, out_dir: str) -> HostResult:
    """`hosttune capture -o TMP` on the host, then download it to DIR/<host>.tar.gz."""
    from hosttune import discovery, hwclass
    from hosttune.sysfs import HostFS

    h = ctx.host
    local = capture_file(out_dir, h.name)
    with ctx.session() as s:
        # a directory of the login user's, so that the user can remove the capture even when
        # hosttune_command runs as another user (sudo) and wrote it
        remote_dir = s.temp_path("hosttune-capture")
        remote = f"{remote_dir}/capture.tar.gz"
        try:
            out = s.run(f"mkdir -m 700 {shlex.quote(remote_dir)} && "
                        + s.hosttune(["capture", "--root", h.root, "-o", remote]))
            if out.exit_code != 0:
                raise _remote_failure("hosttune capture", h, out)
            s.get(remote, local)
        finally:
            s.remove(remote_dir)
    try:  # a capture the controller cannot plan from is not a capture
        topo = discovery.discover(HostFS.open(local))
    except HosttuneError as exc:
        raise Failed(f"downloaded capture is not usable: {exc}") from None
    return HostResult(h, "ok", exit_code=0, detail={
        "capture": local, "capture_bytes": os.path.getsize(local), "hostname": topo.hostname,
        "hw_class": hwclass.class_id(topo)})


# -- plan (local, from the captures) ---------------------------------------------------------------
def plan(ctx: Context, captures_dir: str) -> HostResult:
    """hosttune.discovery on the host's capture + the host's inventory policy -> make_plan."""
    from hosttune import discovery, policy
    from hosttune.plan import make_plan
    from hosttune.sysfs import HostFS

    h = ctx.host
    if h.policy_error:
        return HostResult(h, "invalid", str(h.policy_error), detail={"policy_source": h.policy_source})
    path = capture_file(captures_dir, h.name)
    if not os.path.isfile(path):
        raise Failed(f"no capture at {path} (run `hosttune fleet capture --out {captures_dir}` first)")
    try:
        fs = HostFS.open(path)
        topo = discovery.discover(fs)
        # like `hosttune plan`: the inventory's policy, else the host's own config file (capture records it)
        pol = h.policy if h.policy is not None else policy.resolve(fs, None)
        result = make_plan(topo, pol)
    except PolicyError as exc:
        where = h.policy_source or "policy"
        return HostResult(h, "invalid", f"{where}: {exc}", detail={"capture": path})
    except HosttuneError as exc:
        raise Failed(f"cannot plan from {path}: {exc}") from None
    return HostResult(h, "ok", result=result, detail={"capture": path})


# -- verify --------------------------------------------------------------------------------------
VERIFY_CODES = {0: "ok", 1: "drift", 3: "pending-reboot"}


def verify(ctx: Context) -> HostResult:
    """`hosttune verify --json --root R [--policy TMP]` on the host."""
    h = ctx.host
    with ctx.session() as s:
        out = _run_with_policy(s, h, ["verify", "--json", "--root", h.root])
    return verify_result(h, out)


def verify_result(h: FleetHost, out: Output) -> HostResult:
    doc = _json(out)
    if out.exit_code not in VERIFY_CODES:
        raise _remote_failure("hosttune verify", h, out)
    status = VERIFY_CODES[out.exit_code]
    if doc is None or not str(doc.get("schema", "")).startswith("hosttune.verify/"):
        return HostResult(h, "failed", f"hosttune verify exited {out.exit_code} without verify JSON "
                                       f"({tail(out.stderr) or 'no stderr'})", exit_code=out.exit_code)
    if doc.get("status") in ("ok", "drift", "pending-reboot"):
        status = doc["status"]
    return HostResult(h, status, _verify_reason(doc, status), exit_code=out.exit_code, result=doc)


def _verify_reason(doc: dict[str, Any], status: str) -> str | None:
    if status == "ok":
        return None
    settings = doc.get("settings") or []
    bad = [x for x in settings if isinstance(x, dict) and x.get("status") == status]
    shown = []
    for x in bad[:3]:
        name = f"{x.get('area')} {x.get('name')}".strip()
        shown.append(f"{name}: expected {x.get('expected')!r}, actual {x.get('actual')!r}")
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    label = "drift" if status == "drift" else "pending reboot"
    return f"{len(bad)} {label}: " + "; ".join(shown) + more if shown else label


# -- bench ---------------------------------------------------------------------------------------
def bench(ctx: Context, extra_args: list[str], pass_policy: bool) -> HostResult:
    """`hosttune bench --json [--root R --policy TMP] EXTRA...` on the host; the per-instance
    throughput/p99/verdict are pulled out by hosttune.fleet.bench.summarize."""
    h = ctx.host
    with ctx.session() as s:
        if pass_policy:
            out = _run_with_policy(s, h, ["bench", "--json", "--root", h.root, *extra_args])
        else:
            out = s.run(s.hosttune(["bench", "--json", *extra_args]))
    doc = _json(out)
    if doc is None:
        if out.exit_code:
            raise _remote_failure("hosttune bench", h, out)
        raise Failed(f"hosttune bench printed no JSON ({tail(out.stderr) or 'no stderr'})")
    summary = bench_collect.summarize(doc)
    if out.exit_code != 0:  # 1: --fail-unstable and the numbers are not stable
        return HostResult(h, "failed", f"hosttune bench exited {out.exit_code}: {bench_collect.verdict_text(summary)}",
                          exit_code=out.exit_code, result=doc, detail={"bench": summary})
    return HostResult(h, "ok", exit_code=0, result=doc, detail={"bench": summary})
