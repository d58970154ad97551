"""Which policy applies to a root is decided once (hosttune.policy.resolve): the CLI, a capture
tarball (which records the host's config file), fleet and the agent all agree."""

import json
import os

from hosttune import policy
from hosttune.agent import config as agent_config
from hosttune.sysfs import HostFS
from tests.conftest import run_cli


def _own_policy(tree, text):
    os.makedirs(os.path.join(tree, "etc/hosttune"), exist_ok=True)
    with open(os.path.join(tree, "etc/hosttune/hosttune.yaml"), "w") as f:
        f.write(text)


def test_the_hosts_own_policy_applies_to_its_root_and_its_capture(tree, tmp_path):
    _own_policy(tree, "policy: {profile: throughput, instances: {base_port: 9100}}\nagent: {interval: 60}\n")
    direct = json.loads(run_cli("plan", "--root", tree, "--json", check=0).stdout)
    assert direct["profile"] == "throughput" and direct["instances"][0]["port"] == 9100
    capture = tmp_path / "host.tar.gz"
    run_cli("capture", "--root", tree, "-o", str(capture), check=0)
    from_capture = json.loads(run_cli("plan", "--root", str(capture), "--json", check=0).stdout)
    assert from_capture["policy"] == direct["policy"]
    assert policy.resolve(HostFS.open(str(capture)), None) == direct["policy"]
    agent = agent_config.load(HostFS.open(tree), None)
    assert agent.policy == direct["policy"] and agent.path.endswith("/etc/hosttune/hosttune.yaml")


def test_an_explicit_policy_wins_and_a_bad_own_policy_is_one_line(tree, tmp_path):
    _own_policy(tree, "profile: [not, a, profile]\n")
    proc = run_cli("plan", "--root", tree)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "etc/hosttune/hosttune.yaml: profile" in proc.stderr
    explicit = tmp_path / "p.yaml"
    explicit.write_text("profile: latency\n")
    assert json.loads(run_cli("plan", "--root", tree, "--policy", str(explicit), "--json", check=0).stdout)[
        "profile"] == "latency"
