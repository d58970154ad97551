"""`hosttune fleet`: capture, plan, verify and bench a set of hosts over SSH.

The hosts, their connection variables and their policy come from an Ansible inventory, read through
ansible-core's own inventory API (`inventory`); commands run over SSH with Fabric (`ssh`), on a
bounded pool of worker threads with per-host timeouts (`runner`); per-command work is in `ops`,
the combined report (table, JSON, HTML) in `report`. See docs/fleet.md.

Nothing here is imported by `hosttune plan`: ansible and fabric are imported inside the handlers.
"""
