"""`hosttune apply`, `hosttune verify`, `hosttune restore`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hosttune import areas, numbers
from hosttune.cliutil import add_policy, add_root, load_plan, print_json
from hosttune.errors import EXIT_DRIFT, EXIT_FAILED, EXIT_OK, EXIT_REBOOT



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("apply", help="apply the plan's runtime settings and stage its kernel arguments")
    add_root(p)
    add_policy(p)
    p.add_argument("--dry-run", action="store_true", help="show what would change (diffs), change nothing")
    # the registry's names as they stand when the parser is built
    p.add_argument("--only", nargs="+", choices=areas.NAMES, metavar="AREA",
                   help=f"limit to areas: {' '.join(areas.NAMES)}")
    p.add_argument("--wait", type=numbers.arg_udecimal(0, 86400), default=30.0, help="seconds to wait for another run's lock (default 30)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apply)

    p = subparsers.add_parser("verify", help="compare the host with the plan, one line per setting")
    add_root(p)
    add_policy(p)
    p.add_argument("--only", nargs="+", choices=areas.NAMES, metavar="AREA")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="print only settings that are not ok")
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("restore", help="put back every value the first apply found")
    add_root(p)
    p.add_argument("--wait", type=numbers.arg_udecimal(0, 86400), default=30.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_restore)


def cmd_apply(args: argparse.Namespace) -> int:
    from hosttune import engine
    from hosttune.sysfs import HostFS

    plan = load_plan(args)
    report = engine.apply(plan, HostFS.open(args.root), dry_run=args.dry_run, only=args.only, lock_wait=args.wait)
    if args.json:
        print_json(report)
    else:
        print(render_apply(report))
    return EXIT_REBOOT if report["reboot_required"] else EXIT_OK


def render_apply(r: dict[str, Any]) -> str:
    verb = "would change" if r["dry_run"] else "changed"
    lines = []
    if r.get("recovered"):
        lines.append(f"rolled back an interrupted run: {len(r['recovered'])} value(s) put back")
    for c in r["changes"]:
        lines.append(c["diff"].rstrip() if "\n" in c["diff"] else f"{verb}: {c['area']:<11} {c['name']}: "
                     f"{c['before']} -> {c['after']}")
    for u in r["unsupported"]:
        lines.append(f"unsupported: {u['area']:<11} {u.get('name', '')} {u['reason']}".replace("  ", " "))
    for cmd in r["commands"]:
        lines.append(f"command: {' '.join(cmd['argv'])} ({cmd.get('result', '')})")
    if not r["changes"] and not r["changed"]:
        lines.append("nothing to change: the host already matches the plan")
    else:
        lines.append(f"{len(r['changes'])} value(s) {verb}")
    if r["reboot_required"]:
        lines.append("reboot required: the running kernel command line lacks the planned arguments")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> int:
    from hosttune import engine
    from hosttune.sysfs import HostFS

    plan = load_plan(args)
    report = engine.verify(plan, HostFS.open(args.root), only=args.only)
    if args.json:
        print_json(report)
    else:
        print(render_verify(report, quiet=args.quiet))
    return {"ok": EXIT_OK, "drift": EXIT_DRIFT, "pending-reboot": EXIT_REBOOT}[report["status"]]


def render_verify(r: dict[str, Any], quiet: bool = False) -> str:
    lines = [f"{'status':<15} {'area':<11} {'setting':<34} {'expected':<22} actual"]
    for row in r["settings"]:
        if quiet and row["status"] == "ok":
            continue
        actual = row["actual"] if row["actual"] is not None else "-"
        extra = f"  ({row['reason']})" if row.get("reason") else ""
        lines.append(f"{row['status']:<15} {row['area']:<11} {row['name'][:34]:<34} "
                     f"{str(row['expected'])[:22]:<22} {actual}{extra}")
    c = r["counts"]
    lines.append(f"{r['hostname']}: {r['status']} ({c['ok']} ok, {c['drift']} drift, "
                 f"{c['pending-reboot']} pending reboot, {c['unsupported']} unsupported)")
    return "\n".join(lines)


def cmd_restore(args: argparse.Namespace) -> int:
    from hosttune import engine
    from hosttune.sysfs import HostFS

    report = engine.restore(HostFS.open(args.root), lock_wait=args.wait)
    if args.json:
        print_json(report)
    else:
        for path in report["restored"]:
            print(f"restored: {path}")
        for f in report["failed"]:
            print(f"failed: {f['path']}: {f['error']}", file=sys.stderr)
        for cmd in report["commands"]:
            print(f"command: {' '.join(cmd['argv'])} ({cmd.get('result', '')})")
        print(f"{len(report['restored'])} value(s) restored, {len(report['failed'])} failed")
        if report["reboot_required"]:
            print("reboot required: the boot configuration was put back; the running kernel keeps "
                  "hosttune's arguments until the next boot")
    if report["failed"]:
        return EXIT_FAILED
    return EXIT_REBOOT if report["reboot_required"] else EXIT_OK
