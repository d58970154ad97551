"""`hosttune fleet capture|plan|verify|bench -i INVENTORY [--limit PATTERN]`.

Top-level imports stay light: ansible and fabric are imported by the handlers only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time

from hosttune import numbers
from hosttune.errors import HosttuneError

DEFAULT_FORKS = 5  # like ansible's
# bounds of the options (docs/security.md): ASCII digits, checked by argparse
MAX_FORKS = 1024
MAX_TIMEOUT = 86400
DEFAULT_CONNECT_TIMEOUT = 10  # like ansible's `timeout`
DEFAULT_TIMEOUT = {"capture": 120.0, "verify": 120.0, "bench": 1800.0}
DEFAULT_CAPTURES = "captures"


def register(subparsers: argparse._SubParsersAction) -> None:
    fleet = subparsers.add_parser("fleet", help="capture/plan/verify/bench the hosts of an Ansible inventory over SSH",
                                  description="Run hosttune on the hosts of an Ansible inventory over SSH "
                                              "(at most --forks at a time) and report per host.")
    sub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION")
    fleet.set_defaults(func=lambda args: _usage(fleet))

    p = sub.add_parser("capture", help="fetch each host's capture tarball to --out DIR (for offline plan/support)")
    _common(p, ssh=True, command="capture")
    p.add_argument("--out", default=DEFAULT_CAPTURES, metavar="DIR",
                   help=f"where the captures go, one DIR/<host>.tar.gz per host (default: ./{DEFAULT_CAPTURES})")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("plan", help="plan every host from its capture and inventory policy (no SSH)")
    _common(p, ssh=False, command="plan")
    p.add_argument("--captures", default=DEFAULT_CAPTURES, metavar="DIR",
                   help=f"the captures from `fleet capture --out DIR` (default: ./{DEFAULT_CAPTURES})")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("verify", help="run `hosttune verify` on every host with its inventory policy")
    _common(p, ssh=True, command="verify")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("bench", help="run `hosttune bench` on every host; throughput/p99 side by side")
    _common(p, ssh=True, command="bench")
    p.add_argument("--no-policy", dest="pass_policy", action="store_false",
                   help="do not pass --root/--policy from the inventory to `hosttune bench`")
    p.add_argument("bench_args", nargs="*", metavar="-- BENCH_ARGS",
                   help="arguments passed on to `hosttune bench --json` on every host (after --)")
    p.set_defaults(func=cmd_bench)


def _common(p: argparse.ArgumentParser, ssh: bool, command: str) -> None:
    p.add_argument("-i", "--inventory", action="append", required=True, metavar="INVENTORY",
                   help="Ansible inventory (file, directory or host list); repeatable")
    p.add_argument("-l", "--limit", metavar="PATTERN", help="Ansible host pattern to restrict the hosts")
    p.add_argument("-f", "--forks", type=numbers.arg_uint(0, MAX_FORKS), default=DEFAULT_FORKS,
                   help=f"hosts worked on at the same time (default {DEFAULT_FORKS})")
    if ssh:
        p.add_argument("--connect-timeout", type=numbers.arg_uint(0, MAX_TIMEOUT), default=DEFAULT_CONNECT_TIMEOUT, metavar="S",
                       help="seconds for TCP connect, SSH banner and authentication, per host "
                            f"(default {DEFAULT_CONNECT_TIMEOUT})")
        p.add_argument("--timeout", type=numbers.arg_udecimal(0, MAX_TIMEOUT), default=DEFAULT_TIMEOUT[command], metavar="S",
                       help="seconds for each remote command and file transfer, per host "
                            f"(default {DEFAULT_TIMEOUT[command]:g})")
        p.add_argument("--strict-host-keys", action="store_true",
                       help="refuse hosts missing from known_hosts (default: accept new host keys, "
                            "refuse changed ones)")
    p.add_argument("--json", action="store_true", help="print the report JSON (hosttune.fleet/1) instead of the table")
    p.add_argument("--report", metavar="DIR", help="write DIR/report.json and DIR/report.html")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _run(args: argparse.Namespace, command: str, work, *, check_policy: bool) -> int:
    from hosttune.fleet import inventory, report, runner
    from hosttune.fleet.ssh import Options

    if args.forks < 1:
        raise HosttuneError("must be at least 1", where="--forks")
    connect_timeout = getattr(args, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    timeout = getattr(args, "timeout", None)
    if connect_timeout < 1:
        raise HosttuneError("must be at least 1 (seconds)", where="--connect-timeout")
    if timeout is not None and timeout <= 0:
        raise HosttuneError("must be more than 0 (seconds)", where="--timeout")
    if not getattr(args, "verbose", False):  # paramiko logs every failed handshake with a traceback
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    hosts = inventory.load(args.inventory, args.limit)
    if check_policy:
        problem = inventory.policy_errors(hosts)
        if problem:
            raise HosttuneError(problem)
    options = Options(connect_timeout=connect_timeout, timeout=timeout,
                      strict_host_keys=getattr(args, "strict_host_keys", False))
    started, t0 = time.time(), time.monotonic()
    results, interrupted = runner.run(hosts, work, forks=args.forks, options=options, label=command,
                                      progress=None if args.quiet else sys.stderr)
    rep = report.build(command, results, interrupted, inventory=args.inventory, limit=args.limit,
                       started=started, elapsed_s=time.monotonic() - t0, forks=args.forks,
                       connect_timeout=connect_timeout, timeout=timeout)
    if args.report:
        try:
            paths = report.write(rep, args.report)
        except OSError as exc:
            raise HosttuneError(f"cannot write the report ({exc.strerror})", where=args.report) from None
        if not args.quiet:
            print(f"fleet {command}: wrote {', '.join(paths[:2])}", file=sys.stderr)
    if args.json:
        from hosttune.cliutil import print_json

        print_json(rep)
    else:
        print(report.table(rep))
    if interrupted:
        _exit_now_if_workers_hang(rep["exit_code"])
    return rep["exit_code"]


def _exit_now_if_workers_hang(code: int) -> None:
    """After Ctrl-C the report is out; a worker still blocked in a network call (a handshake
    that ignores the closed socket, a remote command) must not hold the exit: the interpreter
    joins every pool thread at exit, for up to the SSH timeouts."""
    from hosttune.fleet import runner

    if any(t.name.startswith(runner.THREAD_PREFIX) and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def cmd_capture(args: argparse.Namespace) -> int:
    from hosttune.fleet import ops

    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise HosttuneError(f"cannot create ({exc.strerror})", where=args.out) from None
    return _run(args, "capture", lambda ctx: ops.capture(ctx, args.out), check_policy=False)


def cmd_plan(args: argparse.Namespace) -> int:
    from hosttune.fleet import ops

    if not os.path.isdir(args.captures):
        raise HosttuneError("no such directory (run `hosttune fleet capture --out DIR` first)", where=args.captures)
    return _run(args, "plan", lambda ctx: ops.plan(ctx, args.captures), check_policy=False)


def cmd_verify(args: argparse.Namespace) -> int:
    from hosttune.fleet import ops

    return _run(args, "verify", ops.verify, check_policy=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from hosttune.fleet import ops

    extra = list(args.bench_args)
    return _run(args, "bench", lambda ctx: ops.bench(ctx, extra, args.pass_policy), check_policy=args.pass_policy)
