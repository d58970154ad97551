"""What every command line shares: the --root/--policy arguments, the plan they name, JSON output.
Below the command modules (hosttune/commands/, serve, bench, fleet, agent cli), which all import it;
kept import-light (`hosttune plan` must start fast): the core modules load inside load_plan."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="/", help="host tree: / (live), an extracted capture, or a capture tarball")


def add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", help="policy YAML (default: the embedded default policy; "
                                         "/etc/hosttune/hosttune.yaml is the agent's)")
    parser.add_argument("--overlay", metavar="FILE",
                        help="a `hosttune tune -o` overlay: the host's hardware class's tuned instance "
                             "settings win over the policy's (replaces the policy's tune_overlay)")


def load_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Topology under --root + --policy -> plan (shared by plan/apply/verify, serve and bench)."""
    from hosttune import discovery, plan, policy
    from hosttune.sysfs import HostFS

    fs = HostFS.open(args.root)
    pol = policy.resolve(fs, args.policy)
    if getattr(args, "overlay", None) is not None:
        pol = {**pol, "tune_overlay": policy.load_overlay(args.overlay)}
    topo = discovery.discover(fs)
    return plan.make_plan(topo, pol)


def print_json(data: Any) -> None:
    # indented for a person at a terminal; compact otherwise (json's C encoder only runs without indent)
    sys.stdout.write(json.dumps(data, indent=2 if sys.stdout.isatty() else None))
    sys.stdout.write("\n")
