#!/usr/bin/python
# Copyright: hosttune contributors
# Apache License 2.0 (see LICENSE at the collection root)
"""Ansible module: `hosttune apply` / `hosttune restore` with check mode, diff and changed from JSON."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: apply
short_description: Apply (or restore) hosttune settings, honestly reporting changes
version_added: 0.1.0
description:
  - Runs C(hosttune apply --json --root ROOT --policy CONFIG --only AREA...) on the managed host.
  - In check mode it runs C(hosttune apply --dry-run --json) instead, which changes nothing, and
    reports C(changed) from the changes hosttune would make; with C(--diff) each change is shown
    as before/after.
  - C(changed) always comes from hosttune's JSON, so a second run reports no change.
  - Exit code 3 (done, reboot required) is success with C(reboot_required=true), for apply and restore
    alike (restore put back a boot configuration); exit codes 1 (failed, rolled back) and 2 (bad
    input) fail the task with hosttune's own message.
  - I(command=restore) runs C(hosttune restore --json); restore has no dry run, so in check mode
    nothing is run and the task reports no change.
options:
  command:
    description: Apply the plan, or put back what the first apply found.
    type: str
    default: apply
    choices: [apply, restore]
  areas:
    description:
      - The areas passed to C(--only); empty means all areas.
      - The names are hosttune's (C(hosttune apply --help) lists them); the hosttune on the host checks
        them, so this module keeps no list of its own that could fall behind.
    type: list
    elements: str
    default: []
  reboot_warning:
    description: A warning to emit when hosttune says a reboot is required (the caller will not reboot).
    type: str
attributes:
  check_mode:
    support: partial
    details: I(command=apply) runs C(hosttune apply --dry-run) and reports what would change; I(command=restore) has no dry run and does nothing.
  diff_mode:
    support: partial
    details: Each setting I(command=apply) changes (or would change) as before/after; none for I(command=restore).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - hosttune.tuning.hosttune
author:
  - hosttune maintainers (@hosttune)
"""

EXAMPLES = r"""
- name: Apply the CPU settings of the plan (governor, frequency lock, turbo, EPP, C-states)
  hosttune.tuning.apply:
    areas: [cpufreq, turbo, epp, cstates]
  register: cpu

- name: Stage the kernel arguments (isolcpus, nohz_full, rcu_nocbs); a reboot applies them
  hosttune.tuning.apply:
    areas: [kernel_args]
    reboot_warning: the kernel arguments take effect at the next boot
  register: kernel

- name: Reboot when hosttune staged something for the next boot
  ansible.builtin.reboot:
  when: kernel.reboot_required

- name: Try a policy given inline, in check mode with --diff (nothing is changed)
  hosttune.tuning.apply:
    policy:
      profile: throughput
      thp: madvise
  check_mode: true
  diff: true

- name: Put back what the first apply found
  hosttune.tuning.apply:
    command: restore
"""

RETURN = r"""
changes:
  description: The changes made (or, in check mode, that would be made), from hosttune.apply/1.
  returned: success
  type: list
  elements: dict
reboot_required:
  description: hosttune staged (apply) or put back (restore) kernel arguments that take effect at the next boot.
  returned: success
  type: bool
unsupported:
  description: Areas hosttune could not apply on this host, with the reason.
  returned: success
  type: list
  elements: dict
unsupported_text:
  description: The same, one line each (area name, reason).
  returned: success
  type: list
  elements: str
result:
  description: hosttune's whole JSON output.
  returned: success
  type: dict
exit_code:
  description: hosttune's exit code (0 done, 3 done and a reboot is required).
  returned: success
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hosttune.tuning.plugins.module_utils.hosttune_run import COMMON_ARGS, HosttuneRunError, policy_args, run_json


def _block(change, side):
    """One change as text: a header naming it, then its value (a whole file for file changes)."""
    where = change.get("path") or ""
    value = change.get(side)
    value = "(absent)" if value is None else str(value)
    header = f"# {change.get('area', '?')} {change.get('name') or ''}".rstrip()
    if where and where != change.get("name"):
        header += f" ({where})"
    return f"{header}\n{value.rstrip(chr(10))}\n"


def diff_of(changes, title):
    if not changes:
        return None
    return {
        "before_header": f"{title} (before)",
        "after_header": f"{title} (after)",
        "before": "".join(_block(c, "before") for c in changes),
        "after": "".join(_block(c, "after") for c in changes),
    }


def main():
    module = AnsibleModule(
        argument_spec={
            **COMMON_ARGS,
            "command": {"type": "str", "default": "apply", "choices": ["apply", "restore"]},
            "areas": {"type": "list", "elements": "str", "default": []},  # hosttune checks the names
            "reboot_warning": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    dry_run = module.check_mode
    argv = [p["bin"], p["command"], "--root", p["root"], "--json"]
    if p["command"] == "restore" and dry_run:
        module.exit_json(changed=False, changes=[], reboot_required=False, unsupported=[], unsupported_text=[], result={},
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
        rc, data, _stdout, stderr = run_json(module, argv, ok_rcs=(0, 3))
    except HosttuneRunError as exc:
        data = exc.details.get("data")
        failed = data.get("failed") if isinstance(data, dict) else None
        if failed:  # restore reports what it could not put back in its JSON, not on stderr
            exc.msg += "; " + "; ".join(f"{f.get('path')}: {f.get('error')}" for f in failed)
        module.fail_json(msg=exc.msg, **exc.details)
    finally:
        if temp:
            try:
                os.unlink(temp)
            except OSError:
                pass
    if p["command"] == "restore":
        # hosttune.restore/1: {restored: [paths], failed: [...], commands: [...], reboot_required}
        restored = data.get("restored") or []
        changes = [{"area": "restore", "name": path, "path": path, "before": "(tuned)", "after": "(original)"}
                   for path in restored]
        changed = bool(restored)
    else:
        changes = data.get("changes") or []
        changed = bool(data.get("changed")) or (dry_run and bool(changes))
    # hosttune's one answer, for apply and restore alike: the JSON field, and exit code 3
    reboot_required = bool(data.get("reboot_required")) or rc == 3
    result = {
        "changed": changed,
        "changes": changes,
        "reboot_required": reboot_required,
        "unsupported": data.get("unsupported") or [],
        "unsupported_text": [" ".join(str(x) for x in (u.get("area"), u.get("name")) if x) + f": {u.get('reason')}"
                             for u in data.get("unsupported") or []],
        "result": data,
        "exit_code": rc,
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
