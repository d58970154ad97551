import pytest

from hosttune import policy
from hosttune.errors import PolicyError
from tests.conftest import run_cli


def test_defaults_per_profile():
    lat = policy.validate({})
    thr = policy.validate({"profile": "throughput"})
    assert lat["profile"] == "latency" and lat["cstates"]["max_latency_us"] == 10
    assert thr["cpufreq"]["turbo"] == "keep" and thr["thp"] == "madvise"


def test_user_values_merge_over_defaults():
    p = policy.validate({"housekeeping": {"cores_per_node": 2}, "sysctls": {"vm.swappiness": 1}})
    assert p["housekeeping"] == {"cores_per_node": 2, "cpus": None}
    assert p["sysctls"]["vm.swappiness"] == 1 and p["sysctls"]["kernel.numa_balancing"] == 0


def test_agent_config_shape_is_accepted():
    p = policy.validate({"policy": {"profile": "throughput"}, "agent": {"interval": 5}})
    assert p["profile"] == "throughput"


@pytest.mark.parametrize("raw,field", [
    ({"bogus": 1}, "bogus"),
    ({"housekeeping": {"cores": 1}}, "housekeeping.cores"),
    ({"housekeeping": {"cores_per_node": "two"}}, "housekeeping.cores_per_node"),
    ({"housekeeping": {"cores_per_node": 0}}, "housekeeping.cores_per_node"),
    ({"housekeeping": {"cpus": "0-x"}}, "housekeeping.cpus"),
    ({"housekeeping": {"cpus": "0-3"}, "isolation": {"cpus": "3-7"}}, "isolation.cpus"),
    ({"profile": "fast"}, "profile"),
    ({"thp": "sometimes"}, "thp"),
    ({"cpufreq": {"lock": "turbo"}}, "cpufreq.lock"),
    ({"cpufreq": {"turbo": True}}, "cpufreq.turbo"),
    ({"isolation": {"enabled": "yes"}}, "isolation.enabled"),
    ({"isolation": {"isolcpus_flags": ["fast"]}}, "isolation.isolcpus_flags"),
    ({"isolation": {"extra_kernel_args": ["a b"]}}, "isolation.extra_kernel_args"),
    ({"sysctls": {"swappiness": 1}}, "sysctls.swappiness"),
    ({"sysctls": {"vm.swappiness": [1]}}, "sysctls.vm.swappiness"),
    ({"instances": {"nodes": "some"}}, "instances.nodes"),
    ({"instances": {"base_port": 70000}}, "instances.base_port"),
    ({"instances": {"inference_precision": "fp64"}}, "instances.inference_precision"),
    ({"required": ["everything"]}, "required"),
    ([1, 2], None),
])
def test_bad_policy_names_the_field(raw, field):
    with pytest.raises(PolicyError) as info:
        policy.validate(raw)
    if field:
        assert info.value.where == field


def test_policy_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("housekeeping:\n  cores_per_node: [\n")
    with pytest.raises(PolicyError) as info:
        policy.load(str(bad))
    assert str(bad) in str(info.value) and "line" in str(info.value)
    bad.write_text("thp: sometimes\n")
    proc = run_cli("plan", "--policy", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hosttune: error: {bad}: thp: must be one of always, madvise, never, keep, got 'sometimes'"
    assert "Traceback" not in proc.stderr
    proc = run_cli("plan", "--policy", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr and "Traceback" not in proc.stderr
