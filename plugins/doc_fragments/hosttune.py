# Copyright: hosttune contributors
# Apache License 2.0 (see LICENSE at the collection root)
"""The options both hosttune modules take (extends_documentation_fragment: hosttune.tuning.hosttune);
their argument spec is module_utils.hosttune_run.COMMON_ARGS. Also their platform attribute (the
descriptions of the attributes come from ansible.builtin.action_common_attributes)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  bin:
    description: The hosttune executable on the host.
    type: path
    default: /opt/hosttune/venv/bin/hosttune
  root:
    description: Passed as C(--root).
    type: path
    default: /
  config:
    description: The configuration file passed as C(--policy) (not used by C(topology)).
    type: path
    default: /etc/hosttune/hosttune.yaml
  policy:
    description:
      - An inline policy used instead of I(config) (written to a temporary file, then removed).
      - hosttune's errors about it name it C(hosttune_policy.<field>), the variable the roles pass.
    type: dict
attributes:
  platform:
    platforms: posix
    details: A Linux host with hosttune installed at I(bin) (the hosttune.tuning.hosttune_agent role installs it).
"""
