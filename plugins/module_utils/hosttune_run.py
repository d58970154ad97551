# Copyright: hosttune contributors
# Apache License 2.0 (see LICENSE at the collection root)
# Shared by the hosttune.tuning.query and hosttune.tuning.apply modules: run the hosttune CLI on the host.
"""Run `hosttune ... --json` on the managed host and parse its output."""

from __future__ import annotations

import json
import os
import re
import tempfile

NOT_INSTALLED = "hosttune is not installed at {bin} (run the hosttune_agent role first, or set hosttune_bin)"
NO_CONFIG = ("hosttune configuration {config} does not exist (the hosttune_agent role writes it from "
             "hosttune_policy; run it first, or set hosttune_config)")


# the options both modules take (documented once in doc_fragments/hosttune.py)
COMMON_ARGS = {
    "bin": {"type": "path", "default": "/opt/hosttune/venv/bin/hosttune"},
    "root": {"type": "path", "default": "/"},
    "config": {"type": "path", "default": "/etc/hosttune/hosttune.yaml"},
    "policy": {"type": "dict"},
}


class HosttuneRunError(Exception):
    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


POLICY_PREFIX = "hosttune-policy-"
# what an inline policy is called in hosttune's messages: the variable the roles pass it from
POLICY_NAME = "hosttune_policy"


def policy_file(policy):
    """A temporary configuration file holding `policy` (JSON is YAML); the caller deletes it."""
    handle, path = tempfile.mkstemp(prefix=POLICY_PREFIX, suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        json.dump({"policy": policy}, out)
    return path


def run_json(module, argv, ok_rcs=(0,)):
    """Run argv (the hosttune command first); return (rc, parsed JSON or None, stdout, stderr).

    An exit code outside ok_rcs raises HosttuneRunError carrying hosttune's own message (stderr)."""
    if not os.path.exists(argv[0]):
        raise HosttuneRunError(NOT_INSTALLED.format(bin=argv[0]), cmd=argv)
    rc, stdout, stderr = module.run_command(argv, environ_update={"LC_ALL": "C.UTF-8"})
    data = None
    if stdout.strip():
        try:
            data = json.loads(stdout)
        except ValueError:
            data = None
    if rc not in ok_rcs:
        message = stderr.strip() or ("see its JSON output" if data is not None else stdout.strip()) or "no output"
        message = name_the_policy(message, argv)
        raise HosttuneRunError(f"{' '.join(argv[1:2])} failed (exit {rc}): {message}",
                               exit_code=rc, stdout=stdout, stderr=stderr, cmd=argv, data=data)
    if data is None:
        raise HosttuneRunError(f"{' '.join(argv[1:2])} printed no JSON (exit {rc}): {stderr.strip()}",
                               exit_code=rc, stdout=stdout, stderr=stderr, cmd=argv)
    return rc, data, stdout, stderr


def name_the_policy(message, argv):
    """hosttune names the file a policy error is in; for an inline policy that is a temporary file the
    user never wrote: name the variable instead (`<tmp>: cpufreq.governer: ...` becomes
    `hosttune_policy.cpufreq.governer: ...`)."""
    if "--policy" not in argv[:-1]:
        return message
    path = argv[argv.index("--policy") + 1]
    if not os.path.basename(path).startswith(POLICY_PREFIX):
        return message
    # the file's policy: key is the variable (hosttune names a field under it policy.<field>)
    message = message.replace(path + ": policy: ", POLICY_NAME + ": ").replace(path + ": policy.", POLICY_NAME + ".")
    message = re.sub(re.escape(path) + r": (?=[\w\[\]-]+(?:\.[\w\[\]-]+)*: )", POLICY_NAME + ".", message)
    return message.replace(path, POLICY_NAME)


def policy_args(module, config, policy):
    """(--policy arguments, temp file to delete or None). An inline policy wins over the file."""
    if policy is not None:
        path = policy_file(policy)
        return ["--policy", path], path
    if not os.path.exists(config):
        raise HosttuneRunError(NO_CONFIG.format(config=config))
    return ["--policy", config], None
