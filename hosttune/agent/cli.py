"""`hosttune agent` on the command line: arguments, and the hand-over to a lean process.

Kept import-light (hosttune.cli imports every command module for --help).
"""

from __future__ import annotations

import argparse
import os
import sys

from hosttune.agent.args import add_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "agent", help="the daemon: keep the host tuned (re-apply drift), export metrics and status",
        description="Re-plan and verify on an interval, re-apply runtime settings that drifted, serve "
                    "Prometheus metrics and a JSON status. Runs under systemd (Type=notify) or, with "
                    "--foreground, anywhere.")
    add_arguments(p)
    p.set_defaults(func=cmd_agent)


def agent_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--root", args.root]
    if args.config:
        argv += ["--config", args.config]
    if args.foreground:
        argv.append("--foreground")
    if getattr(args, "verbose", False):
        argv.append("--verbose")
    return argv


def cmd_agent(args: argparse.Namespace) -> int:
    """Replace this process (same PID, so systemd's MAINPID and NotifyAccess=main still hold) with
    `python -m hosttune.agent`: the CLI has imported every command module by now, and the agent
    must stay small for as long as it runs."""
    argv = [sys.executable, "-m", "hosttune.agent", *agent_argv(args)]
    if sys.executable:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)
    from hosttune.agent.daemon import main  # no interpreter path: run in this process

    return main(agent_argv(args))
