"""The `hosttune` command line. Each command lives in its own module, which exposes
`register(subparsers)`; a registered parser sets `func(args) -> int`.

Command modules keep their top-level imports light (no openvino, ansible, fabric): `hosttune plan`
must start fast, so heavy libraries are imported inside the handlers that need them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from hosttune import __version__
from hosttune.errors import HosttuneError
from hosttune.extras import missing_extra

if TYPE_CHECKING:
    from importlib.metadata import Distribution

# Modules that register subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "hosttune.commands.core",  # topology, capture, plan
    "hosttune.commands.host",  # apply, verify, restore
    "hosttune.agent.cli",  # agent
    "hosttune.serve.cli",  # serve, model
    "hosttune.bench.cli",  # bench
    "hosttune.tune.cli",  # tune
    "hosttune.fleet.cli",  # fleet
    "hosttune.converge",  # converge (ansible-runner)
]
# Other installed packages add commands through this entry point group (a module with
# `register(subparsers)`): the QEMU testbed declares `testbed` in testbed/pyproject.toml.
ENTRY_POINT_GROUP = "hosttune.commands"


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line naming the argument, exit 2 (the subcommands' parsers are of this
    class too: add_subparsers makes them like their parent); `--help` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    # reading installed packages' metadata costs tens of ms: only when the command is not ours
    # (or for --help), so `hosttune plan` starts as fast as before
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    if command not in subparsers.choices:
        for name, value in plugin_modules():
            try:
                module = importlib.import_module(value)
            except ImportError as exc:  # a package half uninstalled: its command is missing, no traceback
                print(f"hosttune: warning: command {name}: cannot import {value}: {exc}", file=sys.stderr)
                continue
            module.register(subparsers)
    return parser


def plugin_modules() -> list[tuple[str, str]]:
    """(name, module) of the ENTRY_POINT_GROUP entry points, by name. An editable install (a
    checkout's .venv) is read from its pyproject.toml, which is current, rather than from the
    metadata written when it was installed: a command a checkout declares needs no reinstall."""
    from importlib.metadata import distributions

    found: dict[str, str] = {}
    seen: set[str] = set()
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in seen:
            continue  # shadowed by the one found first on sys.path, as importlib's entry_points() does
        seen.add(name)
        editable = _editable_entry_points(dist)
        found.update(editable if editable is not None else
                     {ep.name: ep.value for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP})
    return sorted(found.items())


def _editable_entry_points(dist: Distribution) -> dict[str, str] | None:
    """The group's entry points in an editable install's pyproject.toml; None: not one."""
    import json
    import tomllib
    from urllib.parse import unquote, urlparse

    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}")
        if url.get("dir_info", {}).get("editable"):
            source = unquote(urlparse(url["url"]).path)
        elif dist.read_text("PKG-INFO") is not None and os.path.isfile(dist.locate_file("pyproject.toml")):
            # the egg-info an editable build leaves in the source tree, found first when the tree is on
            # sys.path: its entry_points.txt is as old as that build
            source = str(dist.locate_file(""))
        else:
            return None
        with open(f"{source}/pyproject.toml", "rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, ValueError, KeyError, AttributeError):
        return None  # not an editable pyproject project: its installed metadata holds
    return dict(project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {}))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
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
        for line in str(exc).splitlines() or [""]:  # a policy's mistakes: one line each (PolicyErrors)
            print(f"hosttune: error: {line}", file=sys.stderr)
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
