"""The `hosttune` command line. Each command lives in its own module, which exposes
`register(subparsers)`; a registered parser sets `func(args) -> int`.

Command modules keep their top-level imports light (no openvino, ansible, fabric): `hosttune plan`
must start fast, so heavy libraries are imported inside the handlers that need them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hosttune import __version__
from hosttune.errors import HosttuneError
from hosttune.extras import missing_extra

# Modules that register subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "hosttune.commands.core",  # topology, capture, plan
    "hosttune.commands.host",  # apply, verify, restore
    "hosttune.agent.cli",  # agent
    "hosttune.serve.cli",  # serve, model
    "hosttune.bench.cli",  # bench
    "hosttune.fleet.cli",  # fleet
    "hosttune.converge",  # converge (ansible-runner)
    "hosttune_testbed.cli",  # testbed (QEMU guests): its own package (testbed/), in a checkout only
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hosttune",
        description="Prepare multi-socket Linux hosts for CPU-only OpenVINO inference.",
    )
    parser.add_argument("--version", action="version", version=f"hosttune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that part of hosttune is not in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except HosttuneError as exc:
        print(f"hosttune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:  # a heavy import inside a handler: name the extra that has it
        error = missing_extra(exc, args.command)
        if error is None:
            raise
        print(f"hosttune: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("hosttune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
