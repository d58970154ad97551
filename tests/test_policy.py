import pytest
import yaml

from hosttune import policy
from hosttune.errors import PolicyError, PolicyErrors
from tests.conftest import run_cli


def test_defaults_per_profile():
    lat = policy.validate({})
    thr = policy.validate({"profile": "throughput"})
    assert lat["profile"] == "latency" and lat["cstates"]["max_latency_us"] == 10
    assert thr["cpufreq"]["turbo"] == "keep" and thr["thp"] == "madvise"


def test_idle_poll_is_derived_from_the_profile_unless_given():
    assert policy.validate({})["instances"]["idle_poll_us"] == 1000
    assert policy.validate({"profile": "throughput"})["instances"]["idle_poll_us"] == 0
    assert policy.validate({"profile": "throughput", "instances": {"idle_poll_us": 250}})["instances"]["idle_poll_us"] == 250
    assert policy.validate({"instances": {"idle_poll_us": 0}})["instances"]["idle_poll_us"] == 0


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


@pytest.mark.parametrize("raw,field", [
    # issue 13 case 1: values that reach the GRUB drop-in (sourced by a shell) or sysctl.d
    ({"isolation": {"extra_kernel_args": ["$(touch${IFS}/tmp/PWNED)"]}}, "isolation.extra_kernel_args"),
    ({"isolation": {"extra_kernel_args": ["`id`"]}}, "isolation.extra_kernel_args"),
    ({"isolation": {"extra_kernel_args": ["a=b\\"]}}, "isolation.extra_kernel_args"),
    ({"isolation": {"extra_kernel_args": ["a='b'"]}}, "isolation.extra_kernel_args"),
    ({"isolation": {"extra_kernel_args": ["a\nb"]}}, "isolation.extra_kernel_args"),
    ({"isolation": {"extra_kernel_args": ["x" * 300]}}, "isolation.extra_kernel_args"),
    ({"isolation": {"extra_kernel_args": [f"a{i}" for i in range(33)]}}, "isolation.extra_kernel_args"),
    ({"sysctls": {"vm.swappiness": "10\nkernel.core_pattern = |/tmp/evil"}}, "sysctls.vm.swappiness"),
    ({"sysctls": {"vm.swappiness": "10\r"}}, "sysctls.vm.swappiness"),
    ({"sysctls": {"vm.swappiness": ""}}, "sysctls.vm.swappiness"),
    ({"sysctls": {"vm.swappiness": "1" * 2000}}, "sysctls.vm.swappiness"),
    ({"sysctls": {"vm.swap\x00piness": 1}}, "sysctls.'vm.swap\\x00piness'"),
    ({"sysctls": {"vm/swappiness": 1}}, "sysctls.'vm/swappiness'"),
    ({"sysctls": {"vm..swappiness": 1}}, "sysctls.vm..swappiness"),
    ({"sysctls": {"-vm.swappiness": 1}}, "sysctls.-vm.swappiness"),
    ({"sysctls": {"kernel.x\nvm.y": 1}}, "sysctls.'kernel.x\\nvm.y'"),
    # issue 13 case 6
    ({"instances": {"bind": "127.0.0.1; rm -rf /"}}, "instances.bind"),
    ({"instances": {"bind": "localhost"}}, "instances.bind"),
    ({"instances": {"bind": "fe80::1%eth0"}}, "instances.bind"),
    ({"instances": {"nodes": [True]}}, "instances.nodes"),
    ({"instances": {"nodes": [10**12]}}, "instances.nodes"),
    ({"instances": {"model": "../../etc/passwd"}}, "instances.model"),
    ({"instances": {"model": "sample\n[Service]"}}, "instances.model"),
    ({"instances": {"model": []}}, "instances.model"),
    ({"instances": {"model": ["a", "a:2"]}}, "instances.model"),
    ({"instances": {"model": ["a"] * 17}}, "instances.model"),
    ({"instances": {"model": "a:0"}}, "instances.model"),
    ({"instances": {"model": "a:1x"}}, "instances.model"),
    ({"instances": {"model": "a:١"}}, "instances.model"),  # a digit, but not an ASCII one
    ({"instances": {"model": [{"name": "a"}]}}, "instances.model"),
    ({"instances": {"idle_poll_us": 1_000_001}}, "instances.idle_poll_us"),
    ({"instances": {"idle_poll_us": -1}}, "instances.idle_poll_us"),
    ({"instances": {"idle_poll_us": True}}, "instances.idle_poll_us"),
    ({"instances": {"idle_poll_us": "1ms"}}, "instances.idle_poll_us"),
    ({"instances": {"grpc_base_port": 0}}, "instances.grpc_base_port"),
    ({"instances": {"grpc_base_port": 70000}}, "instances.grpc_base_port"),
    ({"cpufreq": {"governor": "performance\nx"}}, "cpufreq.governor"),
    ({"cpufreq": {"epp": "../x"}}, "cpufreq.epp"),
    ({"cpufreq": {"lock": 10**30}}, "cpufreq.lock"),
    ({"housekeeping": {"cores_per_node": 10**30}}, "housekeeping.cores_per_node"),
    ({"cstates": {"max_latency_us": 10**30}}, "cstates.max_latency_us"),
    ({"housekeeping": {"cpus": "0-100000000000"}}, "housekeeping.cpus"),
    ({"isolation": {"cpus": "0-100000000000"}}, "isolation.cpus"),
    ({"isolation": {"isolcpus_flags": ["x" * 10**6]}}, "isolation.isolcpus_flags"),
    # null where the key takes no null: refused by the key's own check, not passed on to the plan
    ({"sysctls": None}, "sysctls"),
    ({"cpufreq": {"lock": None}}, "cpufreq.lock"),
    ({"instances": {"nodes": None}}, "instances.nodes"),
    ({"instances": {"model": None}}, "instances.model"),
    ({"managers": {"tuned": None}}, "managers.tuned"),
])
def test_hostile_values_name_the_field(raw, field):
    with pytest.raises(PolicyError) as info:
        policy.validate(raw)
    assert info.value.where == field
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("raw,key,value", [
    ({"isolation": {"extra_kernel_args": ["intel_idle.max_cstate=1", "root=UUID=ab-cd", "nosoftlockup",
                                          "systemd.cpu_affinity=0,4", "console=ttyS0,115200n8"]}},
     ("isolation", "extra_kernel_args"), None),
    ({"sysctls": {"net.ipv4.tcp_rmem": "4096\t87380\t6291456", "net.ipv4.conf.eth0.rp_filter": 2}}, ("sysctls",), None),
    ({"instances": {"bind": "::0001"}}, ("instances", "bind"), "::1"),
    ({"instances": {"bind": "0.0.0.0"}}, ("instances", "bind"), "0.0.0.0"),
    ({"instances": {"model": "resnet-50_v1.5-int8"}}, ("instances", "model"), "resnet-50_v1.5-int8"),
    ({"cpufreq": {"epp": "balance_performance"}}, ("cpufreq", "epp"), "balance_performance"),
])
def test_legitimate_values_pass(raw, key, value):
    got = policy.validate(raw)
    for part in key:
        got = got[part]
    assert got == (value if value is not None else got) and got  # accepted (and canonical where given)


def _plan_with(tmp_path, text, mode="w"):
    path = tmp_path / "p.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path, run_cli("plan", "--policy", str(path))


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize("name,text,needles", [
    ("alias bomb", "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9 if i else ['xxxxxxxx'] * 9)}]\n"
                           for i in range(7)) + "sysctls: {vm.swappiness: *l6}\n", ["aliases"]),
    ("deep nesting", "profile: " + "[" * 20000 + "]" * 20000 + "\n", ["line 1"]),
    ("duplicate key", "thp: never\nprofile: latency\nthp: always\n", ["duplicate key 'thp'", "line 3"]),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["not UTF-8"]),
    ("latin-1", b"profile: lat\xe9ncy\n", ["not UTF-8", "offset 12"]),
    ("nul", "profile: \x00\n", ["not valid YAML"]),
    ("policy not a mapping", "policy: 5\nagent: {}\n", ["policy: must be a mapping, got int"]),
    ("bad date", "profile: 2024-02-30\n", ["not valid YAML"]),
    ("huge int", "instances: {base_port: " + "9" * 5000 + "}\n", ["not valid YAML"]),
])
def test_hostile_policy_files_give_one_line(tmp_path, name, text, needles):
    # issue 13 cases 2 and 5 through the real CLI: one line naming the file, exit 2, no traceback
    path, proc = _plan_with(tmp_path, text)
    _one_line_error(proc, str(path), *needles)


def test_policy_file_size_is_capped(tmp_path):
    path, proc = _plan_with(tmp_path, "# padding\n" * 120_000 + "thp: never\n")
    _one_line_error(proc, str(path), "larger than 1048576 bytes")


# -- the config file's shape: one reading (policy.split_config) for the CLI, the agent and fleet ---------
@pytest.mark.parametrize("doc,field", [
    ({"policy": {"thp": "sometimes"}, "agent": {}}, "policy.thp"),
    ({"policy": {"thp": "sometimes"}}, "policy.thp"),
    ({"thp": "sometimes"}, "thp"),
    ({"policy": 5, "agent": {}}, "policy"),
    ({"agent": {}, "thp": "never"}, "thp"),  # a policy field beside agent: is not silently ignored
])
def test_every_reader_names_the_same_field(doc, field):
    from hosttune.agent import config as agent_config

    for read in (lambda: policy.validate(doc), lambda: policy.from_document(doc, "f.yaml"),
                 lambda: agent_config.parse(doc, "f.yaml")):
        with pytest.raises(policy.PolicyError) as err:
            read()
        assert err.value.where in (field, f"f.yaml: {field}"), err.value.where


def test_every_reader_takes_the_same_policy_from_a_nested_file():
    from hosttune.agent import config as agent_config

    doc = {"policy": {"profile": "throughput"}, "agent": {"interval": 5}}
    assert policy.split_config(doc) == ({"profile": "throughput"}, {"interval": 5}, True)
    assert policy.split_config({"agent": {}}) == ({}, {}, True)
    assert policy.split_config({"thp": "never"}) == ({"thp": "never"}, None, False)
    parsed = agent_config.parse(doc, "f.yaml")
    assert parsed.policy == policy.validate(doc) == policy.from_document(doc, "f.yaml")
    assert parsed.policy["profile"] == "throughput" and parsed.agent.interval == 5


# a mistake of every kind the checks find: a bad choice, an unknown key (top level and in a section),
# a wrong type, a field's own check, a section that is no mapping
MISTAKES = {
    "profile": "fast",
    "cpufreq": {"governer": "performance"},
    "turbo": 3,
    "instances": {"base_port": 70000, "bind": "nowhere"},
    "housekeeping": {"cores_per_node": "two"},
    "isolation": "all",
}
MISTAKE_FIELDS = ["profile", "cpufreq.governer", "turbo", "instances.base_port", "instances.bind",
                  "housekeeping.cores_per_node", "isolation"]


def test_every_mistake_is_reported_at_once_naming_its_field():
    with pytest.raises(PolicyErrors) as info:
        policy.validate(MISTAKES)
    errors = info.value.errors
    assert sorted(e.where for e in errors) == sorted(MISTAKE_FIELDS)
    # each line alone is what that mistake alone gives
    for error in errors:
        section, _, key = error.where.partition(".")
        alone = {section: {key: MISTAKES[section][key]}} if key else {section: MISTAKES[section]}
        with pytest.raises(PolicyError) as one:
            policy.validate(alone)
        assert not isinstance(one.value, PolicyErrors) and str(one.value) == str(error), error.where
    assert str(info.value).splitlines() == [str(e) for e in errors]
    assert isinstance(info.value, PolicyError) and info.value.exit_code == 2


def test_cross_field_checks_wait_for_every_field_to_be_right():
    overlap = {"housekeeping": {"cpus": "0-3"}, "isolation": {"cpus": "3-7"}}
    with pytest.raises(PolicyError) as info:
        policy.validate({**overlap, "thp": "sometimes"})
    assert info.value.where == "thp" and not isinstance(info.value, PolicyErrors)
    with pytest.raises(PolicyError) as info:
        policy.validate(overlap)
    assert info.value.where == "isolation.cpus"


def test_every_reader_names_each_field_of_several_mistakes():
    from hosttune.agent import config as agent_config

    doc = {"policy": {"thp": "sometimes", "turbo": 3}, "agent": {}}
    for read, prefix in ((lambda: policy.validate(doc), "policy."),
                         (lambda: policy.from_document(doc, "f.yaml"), "f.yaml: policy."),
                         (lambda: agent_config.parse(doc, "f.yaml"), "f.yaml: policy.")):
        with pytest.raises(PolicyErrors) as err:
            read()
        assert [e.where for e in err.value.errors] == [prefix + "thp", prefix + "turbo"]
        assert err.value.where == prefix + "thp"


def test_the_cli_prints_one_line_per_mistake(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(MISTAKES))
    proc = run_cli("plan", "--policy", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == len(MISTAKE_FIELDS), lines
    head = f"hosttune: error: {bad}: "
    assert all(line.startswith(head) for line in lines), lines
    assert sorted(line[len(head):].split(": ")[0] for line in lines) == sorted(MISTAKE_FIELDS)
