#!/usr/bin/python
# Copyright: hosttune contributors
# Apache License 2.0 (see LICENSE at the collection root)
"""Ansible module: read-only hosttune calls (plan, verify, topology) with their JSON."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: query
short_description: Run a read-only hosttune command (plan, verify, topology) and return its JSON
version_added: 0.1.0
description:
  - Runs C(hosttune COMMAND --json --root ROOT [--policy ...]) on the managed host.
  - Changes nothing, so it runs in check mode too.
  - A failure carries hosttune's own message (its stderr), e.g. a policy error naming the field.
options:
  command:
    description: The hosttune command.
    type: str
    required: true
    choices: [plan, verify, topology]
  ok_rcs:
    description: Exit codes that are not failures (verify exits 1 on drift, 3 when a reboot is pending).
    type: list
    elements: int
    default: [0]
attributes:
  check_mode:
    support: full
    details: Changes nothing, so it runs the same in check mode.
  diff_mode:
    support: none
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - hosttune.tuning.hosttune
author:
  - hosttune maintainers (@hosttune)
"""

EXAMPLES = r"""
- name: Read the plan hosttune computes for this host from /etc/hosttune/hosttune.yaml
  hosttune.tuning.query:
    command: plan
  register: plan

- name: Show where each inference instance runs
  ansible.builtin.debug:
    msg: "{{ item.name }}: CPUs {{ item.cpus_list }}, memory node {{ item.mems_list }}, port {{ item.port }}"
  loop: "{{ plan.data.instances }}"

- name: Ask whether the host is as planned (exit 1 is drift, 3 a pending reboot)
  hosttune.tuning.query:
    command: verify
    ok_rcs: [0, 1, 3]
  register: verify

- name: Fail on drift
  ansible.builtin.assert:
    that: verify.exit_code == 0
    fail_msg: "{{ verify.data.settings | selectattr('status', 'eq', 'drift') | map(attribute='name') | list }}"
"""

RETURN = r"""
data:
  description: The command's JSON output (the plan, hosttune.verify/1, or the topology).
  returned: success
  type: dict
exit_code:
  description: hosttune's exit code.
  returned: always
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hosttune.tuning.plugins.module_utils.hosttune_run import COMMON_ARGS, HosttuneRunError, policy_args, run_json


def main():
    module = AnsibleModule(
        argument_spec={
            **COMMON_ARGS,
            "command": {"type": "str", "required": True, "choices": ["plan", "verify", "topology"]},
            "ok_rcs": {"type": "list", "elements": "int", "default": [0]},
        },
        supports_check_mode=True,
    )
    p = module.params
    argv = [p["bin"], p["command"], "--root", p["root"], "--json"]
    temp = None
    try:
        if p["command"] != "topology":
            extra, temp = policy_args(module, p["config"], p["policy"])
            argv += extra
        rc, data, _stdout, stderr = run_json(module, argv, ok_rcs=tuple(p["ok_rcs"]))
    except HosttuneRunError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    finally:
        if temp:
            try:
                os.unlink(temp)
            except OSError:
                pass
    module.exit_json(changed=False, exit_code=rc, data=data, stderr=stderr, cmd=argv)


if __name__ == "__main__":
    main()
