"""`python -m hosttune_testbed ...` and `hosttune testbed ...`.

    image [--rebuild] [--list] [--prune] [--firmware bios|uefi]   build / print the cached image
    up --name N [--topology T] [--memory MIB] [--accel tcg|kvm|auto] [--firmware bios|uefi] [--json]
                                           boot a guest, leave it running, print its SSH command
    down (--name N [--missing-ok] | --all) power it off (ACPI, then kill) and delete its overlay
    ssh --name N [-- CMD...]               a shell in the guest, or run CMD (exit code passed on)
    list [--json]                          guests under the run directory and their state
    console --name N [--lines K]           the guest's serial console log
    topologies                             the named topologies
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys

from hosttune.errors import HosttuneError
from hosttune_testbed.errors import TestbedError

PROG = "python -m hosttune_testbed"


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `testbed` command (with its subcommands) to the project CLI."""
    parser = subparsers.add_parser(
        "testbed", help="QEMU guests with chosen CPU/NUMA topologies (for tests)",
        description="QEMU guest testbed: a cached Debian image and guests with a chosen "
                    "CPU/NUMA topology, reached by SSH.",
    )
    _add_commands(parser)
    return parser


def _add_commands(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="testbed_command", metavar="SUBCOMMAND")

    p = sub.add_parser("image", help="build the guest image or print the cached image's path")
    p.add_argument("--rebuild", action="store_true", help="build again even if cached")
    p.add_argument("--list", action="store_true", help="list the cached images")
    p.add_argument("--prune", action="store_true",
                   help="delete cached images of other recipes (not ones running guests use)")
    p.add_argument("--firmware", choices=["bios", "uefi"], default="bios",
                   help="bios: GRUB image (default); uefi: systemd-boot image for OVMF")
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("up", help="boot a guest and leave it running; prints its SSH command")
    p.add_argument("--name", required=True)
    p.add_argument("--topology", default="default", help="a named topology (see `topologies`)")
    p.add_argument("--memory", type=int, metavar="MIB",
                   help="total memory, spread over the nodes that have memory")
    p.add_argument("--accel", choices=["tcg", "kvm", "auto"],
                   help="default: $HOSTTUNE_TESTBED_ACCEL or tcg")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for SSH per boot")
    p.add_argument("--firmware", choices=["bios", "uefi"], default="bios",
                   help="bios: SeaBIOS + GRUB (default); uefi: OVMF + systemd-boot")
    p.add_argument("--json", action="store_true", help="print the guest's state as JSON")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="power a guest off and delete its overlay")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--name")
    who.add_argument("--all", action="store_true", help="every running guest")
    p.add_argument("--timeout", type=float, default=90, metavar="S",
                   help="seconds to wait for the ACPI power-down before killing QEMU")
    p.add_argument("--missing-ok", action="store_true",
                   help="exit 0 when the guest is not running (for destroy playbooks)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("ssh", help="a shell in the guest, or run a command (after --)")
    p.add_argument("--name", required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("list", help="guests and their state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("console", help="print a guest's serial console log")
    p.add_argument("--name", required=True)
    p.add_argument("--lines", type=int, default=0, metavar="K", help="only the last K lines")
    p.add_argument("--raw", action="store_true", help="do not strip terminal escapes")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("topologies", help="the named topologies")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_topologies)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def cmd_image(args) -> int:
    from hosttune_testbed import image

    if args.prune:
        for path in image.prune_images():
            print(f"removed {path}", file=sys.stderr)
        return 0
    if args.list:
        for entry in image.cached_images():
            print(f"{entry['path']}  {entry['bytes'] / 2**20:.0f} MiB  built {entry['built']}")
        return 0
    print(image.ensure_image(rebuild=args.rebuild, firmware=args.firmware))
    return 0


def cmd_up(args) -> int:
    from hosttune_testbed.topologies import get_topology
    from hosttune_testbed.vm import Guest, validate_name

    validate_name(args.name)
    topo = get_topology(args.topology)  # a bad name fails before any image build
    if args.memory is not None and args.memory < 128:
        raise TestbedError("--memory must be at least 128 MiB")
    guest = Guest(name=args.name, topology=topo, memory_mib=args.memory, accel=args.accel,
                  detach=True, boot_timeout=args.timeout, firmware=args.firmware)
    # The daemonized QEMU outlives this process: a SIGTERM during the boot must still stop it
    # (start() kills the guest on any exception, SystemExit included).
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        guest.start()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(guest.state_file.read_text().strip())
    else:
        print(guest.ssh_command)
        print(f"guest {guest.name} up ({guest.used_accel}, {guest.boot_seconds:.0f} s to SSH); "
              f"console: {guest.console_log}; stop: {PROG} down --name {guest.name}",
              file=sys.stderr)
    return 0


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def cmd_down(args) -> int:
    from hosttune_testbed.vm import Guest, list_states

    if args.all:
        for state in list_states():
            if state["running"]:
                Guest.attach(state["name"]).shutdown(timeout=args.timeout)
                print(f"guest {state['name']} stopped", file=sys.stderr)
        return 0
    try:
        guest = Guest.attach(args.name)
    except TestbedError:
        if args.missing_ok:
            return 0
        raise
    guest.shutdown(timeout=args.timeout)
    print(f"guest {args.name} stopped", file=sys.stderr)
    return 0


def cmd_ssh(args) -> int:
    from hosttune_testbed.vm import Guest

    guest = Guest.attach(args.name)
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        return subprocess.call(guest.ssh_argv(tty=sys.stdin.isatty()))
    remote = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
    return subprocess.call(guest.ssh_argv() + [remote])


def cmd_list(args) -> int:
    from hosttune_testbed.vm import list_states

    states = list_states()
    if args.json:
        print(json.dumps(states, indent=2))
        return 0
    if not states:
        print("no guests", file=sys.stderr)
        return 0
    print(f"{'NAME':24} {'STATE':8} {'PID':>7} {'PORT':>6} {'TOPOLOGY':11} SSH")
    for s in states:
        running = "running" if s["running"] else s.get("status", "?")
        if not s["running"] and running in ("running", "booting", "starting"):
            running = "dead"
        ssh = s.get("ssh_command", "") if s["running"] else ""
        print(f"{s['name']:24} {running:8} {s.get('pid') or '-':>7} {s.get('port') or '-':>6} "
              f"{s.get('topology', {}).get('name', '?'):11} {ssh}")
    return 0


def cmd_console(args) -> int:
    from hosttune_testbed import paths
    from hosttune_testbed.util import clean_console
    from hosttune_testbed.vm import validate_name

    validate_name(args.name)
    log = paths.run_root() / args.name / "console.log"
    if not log.exists():
        raise TestbedError(f"no console log for guest {args.name!r} ({log} does not exist)")
    text = log.read_bytes().decode("utf-8", "replace")
    if not args.raw:
        text = clean_console(text)
    if args.lines:
        text = "\n".join(text.rstrip("\n").split("\n")[-args.lines:]) + "\n"
    sys.stdout.write(text)
    return 0


def cmd_topologies(args) -> int:
    from hosttune_testbed.qemu import topology_summary
    from hosttune_testbed.topologies import get_topology, names

    topos = [get_topology(n) for n in names()]
    if args.json:
        print(json.dumps([t.to_dict() for t in topos], indent=2))
    else:
        for topo in topos:
            print(topology_summary(topo))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="QEMU guest testbed for hosttune (see testbed/README.md).",
    )
    _add_commands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HosttuneError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
