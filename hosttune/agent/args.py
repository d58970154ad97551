"""The agent's arguments, one definition for `hosttune agent` (agent/cli.py) and the lean
`python -m hosttune.agent` process it hands over to (agent/daemon.py). Import-light."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", help="host tree (default /; an extracted capture for tests)")
    p.add_argument("--config", help="configuration file (default: <root>/etc/hosttune/hosttune.yaml; "
                                    "a policy, or {policy: ..., agent: ...})")
    p.add_argument("--foreground", action="store_true",
                   help="run without systemd (no NOTIFY_SOCKET needed); same loop, JSON logs on stdout")
