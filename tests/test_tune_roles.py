"""The roles and the tune_class playbook with a `hosttune tune` overlay (issue 29), run with
ansible-runner against localhost and synthetic host trees (as tests/test_ansible.py does)."""

import json
import os
import subprocess

import yaml

from hosttune import policy
from tests.test_ansible import (HOSTTUNE, VENV_BIN, base_vars, host, message, play,  # noqa: F401 (fixtures)
                                pytestmark, write_playbook)
from tests.treegen import Spec, write_tree

__all__ = ["pytestmark"]


def class_of(root):
    out = subprocess.run([HOSTTUNE, "topology", "--root", root, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["hw_class"]["id"]


def overlay_doc(class_id, **instances):
    return {"format": policy.OVERLAY_FORMAT, "classes": {class_id: {
        "tuned_on": "tuner", "objective": {"name": "throughput"}, "decision": "tuned",
        "instances": {"hint": "throughput", "streams": 1, "threads_per_stream": 1, "nireq": 3, "smt": False,
                      "per_node": 2, "inference_precision": None, "model": "sample", **instances}}}}


def test_roles_apply_the_overlay_of_the_hosts_class(tmp_path, host, base_vars):
    """hosttune_tune_overlay (a controller path): the agent's configuration carries it as
    policy.tune_overlay, the plan the roles and the agent read has the class's tuned settings, and
    the systemd instances follow: two per node, units hosttune-instance@0a ... @1b. Without it
    again, the split instances' units are removed."""
    overlay = tmp_path / "tuned.yaml"
    overlay.write_text(yaml.safe_dump(overlay_doc(class_of(host))))
    playbook = write_playbook(tmp_path, "agent_instances.yml", ["hosttune_agent", "hosttune_instances"])
    extravars = {**base_vars, "hosttune_tune_overlay": str(overlay)}

    check = play(tmp_path, playbook, extravars, check=True)  # check mode: the inline policy carries it too
    assert check.rc == 0, check.explain()
    planned = check.task("Compute the hosttune plan on the host")[0]["res"]["data"]
    assert [i["name"] for i in planned["instances"]] == ["node0a", "node0b", "node1a", "node1b"]

    run = play(tmp_path, playbook, extravars)
    assert run.rc == 0, run.explain()
    config = yaml.safe_load(open(base_vars["hosttune_config"]))
    assert config["policy"]["tune_overlay"] == yaml.safe_load(overlay.read_text())
    plan = json.loads(subprocess.run([HOSTTUNE, "plan", "--root", host, "--policy", base_vars["hosttune_config"],
                                      "--json"], capture_output=True, text=True, check=True).stdout)
    assert plan["tuned"]["decision"] == "tuned"
    for inst in plan["instances"]:
        assert inst["openvino"]["NUM_STREAMS"] == 1 and inst["ovms"]["nireq"] == 3
    units = base_vars["hosttune_instances_unit_dir"]
    dropins = sorted(d for d in os.listdir(units) if d.endswith(".service.d"))
    assert dropins == [f"hosttune-instance@{i}.service.d" for i in ("0a", "0b", "1a", "1b")]
    text = open(os.path.join(units, "hosttune-instance@1b.service.d", "placement.conf")).read()
    inst = plan["instances"][3]
    # the half's inference CPUs and the node's housekeeping CPUs (serve's own threads)
    assert inst["service_cpus_list"]
    allowed = f"{inst['cpus_list']},{inst['service_cpus_list']}"
    assert f'"--plan-instance" "node1b"' in text and f"AllowedCPUs={allowed}\n" in text
    assert play(tmp_path, playbook, extravars).changed() == []

    plain = play(tmp_path, playbook, base_vars)
    assert plain.rc == 0, plain.explain()
    assert "tune_overlay" not in yaml.safe_load(open(base_vars["hosttune_config"]))["policy"]
    assert sorted(d for d in os.listdir(units) if d.endswith(".service.d")) == [
        "hosttune-instance@0.service.d", "hosttune-instance@1.service.d"]


def test_a_bad_overlay_fails_with_hosttunes_message_naming_the_field(tmp_path, host, base_vars):
    overlay = tmp_path / "tuned.yaml"
    overlay.write_text(yaml.safe_dump(overlay_doc(class_of(host), streams=0)))
    playbook = write_playbook(tmp_path, "agent.yml", ["hosttune_agent"])
    run = play(tmp_path, playbook, {**base_vars, "hosttune_tune_overlay": str(overlay)})
    assert run.rc != 0
    text = "\n".join(message(f) for f in run.failed())
    assert "tune_overlay.classes." in text and ".instances.streams" in text, text
    assert not os.path.exists(base_vars["hosttune_config"])  # refused before the file is written


STANDIN = """#!/bin/sh
# hosttune, except `tune`: writes an overlay for the --root's class (what the real one chooses)
if [ "$1" != tune ]; then exec "{hosttune}" "$@"; fi
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift ;;
    -o) out=$2; shift ;;
    --html) html=$2; shift ;;
    --budget) budget=$2; shift ;;
  esac
  shift
done
class=$("{hosttune}" topology --root "$root" --json | "{python}" -c 'import json,sys; print(json.load(sys.stdin)["hw_class"]["id"])')
cat > "$out" <<EOF
format: hosttune.tune-overlay/1
classes:
  $class:
    tuned_on: $root
    objective: {{name: throughput, budget: "$budget"}}
    decision: tuned
    instances: {{hint: throughput, streams: 2, threads_per_stream: 1, nireq: 4, smt: false, per_node: 1}}
EOF
echo "<html>$class</html>" > "$html"
"""


def test_tune_class_tunes_one_host_per_class_and_merges_the_overlay(tmp_path):
    """Three hosts, two classes: the first host of each class runs `hosttune tune` (a stand-in that
    writes its class's overlay), the overlays are merged on the controller with the classes already
    in the file, and the merged file is one hosttune reads."""
    roots = {"a1": write_tree(str(tmp_path / "a1"), Spec()), "a2": write_tree(str(tmp_path / "a2"), Spec()),
             "b1": write_tree(str(tmp_path / "b1"), Spec(sockets=1, cores_per_node=6))}
    standin = tmp_path / "hosttune-standin"
    standin.write_text(STANDIN.format(hosttune=HOSTTUNE, python=os.path.join(VENV_BIN, "python")))
    standin.chmod(0o755)
    hosts = {name: {"ansible_connection": "local", "ansible_python_interpreter": os.path.join(VENV_BIN, "python"),
                    "hosttune_root": root, "hosttune_tune_remote_dir": str(tmp_path / f"remote-{name}")}
             for name, root in roots.items()}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hosttune": {"hosts": hosts}}}}))
    out = tmp_path / "controller" / "tuned.yaml"
    out.parent.mkdir()
    kept = overlay_doc("c-0123456789ab")  # a class tuned before, from another run
    out.write_text(yaml.safe_dump(kept))
    run = play(tmp_path, "tune_class.yml", {"hosttune_bin": str(standin), "hosttune_tune_overlay": str(out),
                                            "hosttune_tune_budget": "90s", "hosttune_config": str(tmp_path / "none.yaml")},
               inventory=str(inventory))
    assert run.rc == 0, run.explain()
    tuned_hosts = sorted(e["event_data"]["host"] for e in [e for e in run.results(("runner_on_ok",)) if e["event_data"].get("task") == "Run hosttune tune within the budget"])
    assert tuned_hosts == ["a1", "b1"]
    merged = policy.load_overlay(str(out))
    a, b = class_of(roots["a1"]), class_of(roots["b1"])
    assert sorted(merged["classes"]) == sorted([a, b, "c-0123456789ab"])
    assert merged["classes"][a]["tuned_on"] == roots["a1"] and merged["classes"][a]["objective"]["budget"] == "90s"
    assert merged["classes"]["c-0123456789ab"] == kept["classes"]["c-0123456789ab"]
    assert (out.parent / "tune-b1.html").read_text().strip() == f"<html>{b}</html>"
    # a2 is in a1's class: plan --overlay gives it a1's tuned settings
    plan = json.loads(subprocess.run([HOSTTUNE, "plan", "--root", roots["a2"], "--overlay", str(out), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert plan["tuned"]["class"] == a and plan["instances"][0]["openvino"]["NUM_STREAMS"] == 2


def test_molecule_converge_keys_its_overlay_by_the_guests_class(tmp_path, host):
    """molecule/resources/converge.yml's first play (the default scenario's overlay), against a
    synthetic host where hosttune is installed: the overlay holds molecule_tune_instances under the
    host's class, a second run changes nothing, and the plan applies it."""
    from tests.conftest import REPO

    plays = yaml.safe_load(open(os.path.join(REPO, "molecule", "resources", "converge.yml")))
    first = tmp_path / "converge-first.yml"
    first.write_text(yaml.safe_dump(plays[:1], sort_keys=False))
    out = tmp_path / "tune-overlay.yaml"
    settings = {"hint": "throughput", "streams": 3, "threads_per_stream": 1, "nireq": 6}
    extravars = {"hosttune_root": host, "hosttune_bin": HOSTTUNE, "molecule_tune_instances": settings,
                 "molecule_tune_overlay": str(out)}
    run = play(tmp_path, str(first), extravars)
    assert run.rc == 0, run.explain()
    doc = policy.load_overlay(str(out))
    assert list(doc["classes"]) == [class_of(host)] and doc["classes"][class_of(host)]["instances"] == settings
    assert play(tmp_path, str(first), extravars).changed() == []
    plan = json.loads(subprocess.run([HOSTTUNE, "plan", "--root", host, "--overlay", str(out), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert {(i["streams"], i["ovms"]["nireq"]) for i in plan["instances"]} == {(3, 6)}
