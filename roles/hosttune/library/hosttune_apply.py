#!/usr/bin/python
"""Ansible module: `hosttune apply` / `hosttune restore` with check mode, diff and changed from JSON."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hosttune_apply
short_description: Apply (or restore) hosttune settings, honestly reporting changes
description:
  - Runs C(hosttune apply --json --root ROOT --policy CONFIG --only AREA...) on the managed host.
  - In check mode it runs C(hosttune apply --dry-run --json) instead, which changes nothing, and
    reports C(changed) from the changes hosttune would make; with C(--diff) each change is shown
    as before/after.
  - C(changed) always comes from hosttune's JSON, so a second run reports no change.
  - Exit code 3 (done, reboot required) is success with C(reboot_required=true); exit codes 1 (failed,
    rolled back) and 2 (bad input) fail the task with hosttune's own message.
  - I(command=restore) runs C(hosttune restore --json); restore has no dry run, so in check mode
    nothing is run and the task reports no change.
options:
  command:
    description: Apply the plan, or put back what the first apply found.
    type: str
    default: apply
    choices: [apply, restore]
  areas:
    description: The areas passed to C(--only); empty means all areas.
    type: list
    elements: str
    default: []
  bin:
    description: The hosttune executable on the host.
    type: path
    default: /opt/hosttune/bin/hosttune
  root:
    description: Passed as C(--root).
    type: path
    default: /
  config:
    description: The configuration file passed as C(--policy).
    type: path
    default: /etc/hosttune/hosttune.yaml
  policy:
    description: An inline policy used instead of I(config) (written to a temporary file, then removed).
    type: dict
  reboot_warning:
    description: A warning to emit when hosttune says a reboot is required (the caller will not reboot).
    type: str
author: hosttune maintainers
"""

RETURN = r"""
changes:
  description: The changes made (or, in check mode, that would be made), from hosttune.apply/1.
  returned: success
  type: list
  elements: dict
reboot_required:
  description: hosttune staged something (kernel arguments) that needs a reboot.
  returned: success
  type: bool
unsupported:
  description: Areas hosttune could not apply on this host, with the reason.
  returned: success
  type: list
  elements: dict
result:
  description: hosttune's whole JSON output.
  returned: success
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hosttune_run import HosttuneRunError, policy_args, run_json

AREAS = ["cpufreq", "turbo", "epp", "cstates", "sysctls", "thp", "irqs", "irqbalance", "kernel_args"]


def _line(change, side):
    where = change.get("path") or change.get("name") or ""
    name = change.get("name") or ""
    label = f"{change.get('area', '?')} {name}".strip()
    value = change.get(side)
    value = "(absent)" if value is None else value
    return f"{label} [{where}]: {value}" if where and where != name else f"{label}: {value}"


def diff_of(changes, title):
    if not changes:
        return None
    return {
        "before_header": f"{title} (before)",
        "after_header": f"{title} (after)",
        "before": "\n".join(_line(c, "before") for c in changes) + "\n",
        "after": "\n".join(_line(c, "after") for c in changes) + "\n",
    }


def main():
    module = AnsibleModule(
        argument_spec={
            "command": {"type": "str", "default": "apply", "choices": ["apply", "restore"]},
            "areas": {"type": "list", "elements": "str", "default": [], "choices": AREAS},
            "bin": {"type": "path", "default": "/opt/hosttune/bin/hosttune"},
            "root": {"type": "path", "default": "/"},
            "config": {"type": "path", "default": "/etc/hosttune/hosttune.yaml"},
            "policy": {"type": "dict"},
            "reboot_warning": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    dry_run = module.check_mode
    argv = [p["bin"], p["command"], "--root", p["root"], "--json"]
    if p["command"] == "restore" and dry_run:
        module.exit_json(changed=False, changes=[], reboot_required=False, unsupported=[], result={},
                         msg="check mode: hosttune restore has no dry run, nothing was run")
    temp = None
    try:
        if p["command"] == "apply":
            extra, temp = policy_args(module, p["config"], p["policy"])
            argv += extra
            if p["areas"]:
                argv += ["--only"] + p["areas"]
            if dry_run:
                argv.append("--dry-run")
        rc, data, _, stderr = run_json(module, argv, ok_rcs=(0, 3))
    except HosttuneRunError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    finally:
        if temp:
            try:
                os.unlink(temp)
            except OSError:
                pass
    changes = data.get("changes") or []
    changed = bool(data.get("changed")) or (dry_run and bool(changes))
    reboot_required = bool(data.get("reboot_required")) or rc == 3
    result = {
        "changed": changed,
        "changes": changes,
        "reboot_required": reboot_required,
        "unsupported": data.get("unsupported") or [],
        "result": data,
        "rc": rc,
        "stderr": stderr,
        "cmd": argv,
    }
    title = f"hosttune {p['command']}" + (f" --only {' '.join(p['areas'])}" if p["areas"] else "")
    diff = diff_of(changes, title) if changed else None
    if diff and module._diff:
        result["diff"] = diff
    if reboot_required and p["reboot_warning"]:
        module.warn(p["reboot_warning"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
