"""`hosttune agent`: the daemon that keeps a host tuned to its plan.

It re-discovers and re-plans on an interval (and at once when IRQs appear or CPUs go on/offline),
verifies, re-applies what drifted through hosttune.engine, and serves Prometheus metrics and a
JSON status on loopback. It runs under systemd (Type=notify, watchdog) or in the foreground.

The agent process is kept small (RSS budget 25 MB): `hosttune agent` re-executes itself as
`python -m hosttune.agent`, so none of the other commands' modules stay loaded, and the modules
here import only the standard library, PyYAML and the core of hosttune.
"""
