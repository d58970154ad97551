"""Issue 32, class 6: every JSON document hosttune reads (serve --plan, --config, --config-path,
hosttune-model.json, bench results) goes through hosttune/safejson.py: bounded in size and depth
before parsing, finite numbers, a schema with the field named, exit 2. Unit tests, a fuzz suite
over the real schemas, and each reading site through the CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hosttune import safejson
from hosttune.bench.runner import RESULT_SCHEMA
from hosttune.errors import HosttuneError
from hosttune.model import meta_schema
from hosttune.serve import ovms_config
from hosttune.serve.cli import PLAN
from tests.serverproc import HOSTTUNE

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def refused(text, schema=None, **kw) -> str:
    with pytest.raises(HosttuneError) as info:
        safejson.loads(text, "doc.json", schema, **kw)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400 and message.startswith("doc.json: "), message
    return message


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 64"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested deeper than 64"),
    ('{"a": 1e999}', "1e999 is out of range"),
    ('{"a": -1e400}', "out of range"),
    ('{"a": NaN}', "NaN is not a number"),
    ('{"a": Infinity}', "Infinity is not a number"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"a": ' + "9" * 5000 + "}", "not JSON"),
    (b'{"a": "\xff"}', "not UTF-8"),
    ("{nope", "not JSON"),
])
def test_bounded_parsing(text, message):
    assert message in refused(text)


def test_depth_counts_brackets_outside_strings():
    assert safejson.depth(b'{"a": "[[[[[[[[[[\\"[[[[", "b": [[1]]}') == 3
    assert safejson.loads('{"a": "' + "[" * 1000 + '"}', "x") == {"a": "[" * 1000}
    assert safejson.loads("[" * 64 + "]" * 64, "x") is not None


def test_size_is_bounded_before_parsing():
    assert "larger than 100 bytes" in refused("[" + "1," * 100 + "1]", max_bytes=100)


def test_non_finite_may_be_allowed_but_never_as_a_number():
    doc = safejson.loads('{"a": Infinity, "b": NaN}', "x", finite=False)
    assert doc["a"] == float("inf")
    assert "a: must be a finite number, got inf" in refused('{"a": Infinity}', {"a": float}, finite=False)
    assert "b: must be a finite number, got nan" in refused('{"b": NaN}', {"b": float}, finite=False)


@pytest.mark.parametrize("schema, value, ok", [
    (int, 1, True), (int, True, False), (int, 1.0, False), (float, 1, True), (float, False, False),
    (safejson.Int(0, 65535), 65536, False), (safejson.Int(0, 65535), 0, True),
    (bool, 1, False), (bool, True, True), (str, 1, False),
    (safejson.Name(), "../repo/x", False), (safejson.Name(), "..", False), (safejson.Name(), "a/b", False),
    (safejson.Name(), ".hidden", False), (safejson.Name(), "resnet-50_v1.5", True),
    (safejson.List(int, 2), [1, 2, 3], False), (safejson.Map(safejson.SCALAR), {"A": [1]}, False),
    (safejson.Map(safejson.SCALAR), {"A": "x", "B": 2, "C": True, "D": 0.5}, True),
    (safejson.Obj({"a": int}, required=("a",)), {}, False),
    (safejson.Obj({"a": int}, closed=True), {"b": 1}, False),
    (safejson.Opt(int), None, True),
])
def test_schema_types(schema, value, ok):
    if ok:
        safejson.check(value, schema, "x")
    else:
        with pytest.raises(HosttuneError):
            safejson.check(value, schema, "x")


def test_errors_name_the_field():
    schema = {"instances": safejson.List({"models": safejson.List({"version": safejson.Int(1)})})}
    message = refused('{"instances": [{"models": [{"version": 1}, {"version": true}]}]}', schema)
    assert message == "doc.json: instances[0].models[1].version: must be an integer, got True"


# -- fuzz over the real schemas -------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["../repo/x", "trivial", "node0", "CPU", "hosttune.plan/1", "hosttune.bench/1"]))
keys = st.sampled_from(["schema", "instances", "name", "models", "version", "port", "bind", "ovms", "nireq",
                        "openvino", "cpus", "mems", "idle_poll_us", "model_config_list", "config", "base_path",
                        "plugin_config", "model_version_policy", "specific", "versions", "latest", "inputs",
                        "outputs", "shape", "runtime", "runs", "throughput", "latency_ms", "p99", "samples_ms",
                        "aggregate", "values", "p99_ms", "x"])
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(keys, inner, max_size=6)),
                         max_leaves=30)
SCHEMAS = [PLAN, ovms_config.SCHEMA, meta_schema(), RESULT_SCHEMA]


@FUZZ
@given(documents, st.sampled_from(range(len(SCHEMAS))), st.booleans())
def test_any_document_is_a_value_or_one_error(doc, which, finite):
    """Whatever the document, through text and schema: a value or one HosttuneError naming the
    file, never another exception; a value that passes is what json reads (no number read
    differently) and, unless allowed, holds no non-finite number."""
    text = json.dumps(doc)  # writes NaN / Infinity for non-finite floats
    try:
        value = safejson.loads(text, "doc.json", SCHEMAS[which], finite=finite)
    except HosttuneError as exc:
        assert str(exc).startswith("doc.json: ") and "\n" not in str(exc)
        return
    assert json.dumps(value) == text
    if finite:
        assert all(math.isfinite(f) for f in _floats(value)), text


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _floats(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floats(item)


@FUZZ
@given(st.text(alphabet='[]{}",:0123456789.eE+-tfnruaslNIinfy \\', max_size=400))
def test_any_text_is_a_value_or_one_error(text):
    try:
        safejson.loads(text, "doc.json", PLAN)
    except HosttuneError as exc:
        assert str(exc).startswith("doc.json: ") and "\n" not in str(exc)


# -- each reading site, through the CLI ----------------------------------------------------------
def run(*args, timeout=120):
    return subprocess.run([*HOSTTUNE, *args], capture_output=True, text=True, timeout=timeout)


def one_line_exit_2(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for word in words:
        assert word in r.stderr, r.stderr


def _plan(**instance):
    return {"schema": "hosttune.plan/1", "instances": [{"name": "node0", "port": 0, "bind": "127.0.0.1",
                                                       "models": [{"name": "trivial"}], **instance}]}


@pytest.mark.parametrize("change, words", [
    ({"port": True}, ["instances[0].port: must be an integer, got True"]),
    ({"port": 70000}, ["instances[0].port: must be 0 to 65535"]),
    ({"models": [{"name": "../repo/x"}]}, ["instances[0].models[0].name", "does not match"]),
    ({"models": [{"name": "trivial", "version": True}]}, ["instances[0].models[0].version"]),
    ({"ovms": {"nireq": 100_000_000}}, ["instances[0].ovms.nireq: must be 1 to 1024"]),
    ({"openvino": {"NUM_STREAMS": [1]}}, ["instances[0].openvino.NUM_STREAMS"]),
    ({"cpus": "0-3"}, ["instances[0].cpus: must be a list"]),
    ({"idle_poll_us": 1.5}, ["instances[0].idle_poll_us"]),
])
def test_serve_plan_is_held_to_its_schema(tmp_path, change, words):
    (tmp_path / "plan.json").write_text(json.dumps(_plan(**change)))
    r = run("serve", "--plan", str(tmp_path / "plan.json"), "--plan-instance", "node0", "--repo", str(tmp_path))
    one_line_exit_2(r, str(tmp_path / "plan.json"), *words)


def test_serve_plan_nested_100000_levels(tmp_path):
    (tmp_path / "plan.json").write_text('{"schema": "hosttune.plan/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    r = run("serve", "--plan", str(tmp_path / "plan.json"), "--plan-instance", "node0")
    one_line_exit_2(r, "nested deeper than 64 levels")


@pytest.mark.parametrize("args, words", [
    (["--nireq", "100000000"], ["--nireq: must be ASCII digits from 0 to 1024"]),
    (["--config", '{"NUM_STREAMS": [1]}'], ["--config: NUM_STREAMS"]),
    (["--config", '{"NUM_STREAMS": 1e999}'], ["--config", "out of range"]),
    (["--config", "[" * 1000], ["--config", "nested deeper"]),
    (["--config", "[" * 100_000], ["--config", "larger than 65536 bytes"]),
    (["--model", "../x"], ["--model", "does not match"]),
    (["--max-buffered-bytes", "1000"], ["--max-buffered-bytes: must be at least --max-body"]),
])
def test_serve_options_are_bounded(repo, args, words):
    one_line_exit_2(run("serve", "--repo", str(repo), "--rest_port", "0", "--ephemeral-ports", *args), *words)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    pytest.importorskip("openvino")
    from hosttune.model import repo as model_repo

    path = tmp_path_factory.mktemp("models")
    model_repo.sample(str(path), variant="trivial", int8=False)
    return path


@pytest.mark.parametrize("config, words", [
    ({"model_version_policy": {"specific": {"versions": [True]}}},
     ["model_config_list[0].config.model_version_policy.specific.versions[0]: must be an integer, got True"]),
    ({"nireq": True}, ["model_config_list[0].config.nireq"]),
    ({"nireq": 10**8}, ["model_config_list[0].config.nireq: must be 1 to 1024"]),
    ({"plugin_config": {"NUM_STREAMS": {"x": 1}}}, ["plugin_config.NUM_STREAMS"]),
    ({"name": ["trivial"]}, ["model_config_list[0].config.name: must be a string"]),
])
def test_ovms_config_is_held_to_its_schema(repo, tmp_path, config, words):
    doc = {"model_config_list": [{"config": {"name": "trivial", "base_path": str(repo / "trivial"), **config}}]}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    one_line_exit_2(run("serve", "--config-path", str(tmp_path / "config.json"), "--rest_port", "0", "--ephemeral-ports"), *words)


@pytest.mark.parametrize("meta, words", [
    ([1, 2], ["must be an object"]),
    ({"precision": 5}, ["precision: must be a string"]),
    ({"version": True}, ["version: must be an integer, got True"]),
    ({"inputs": [{"name": "x", "shape": [1, "a"]}]}, ["inputs[0].shape[1]"]),
])
def test_model_metadata_is_held_to_its_schema(repo, tmp_path, meta, words):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    (copy / "trivial" / "1" / "hosttune-model.json").write_text(json.dumps(meta))
    one_line_exit_2(run("model", "list", "--repo", str(copy)), "hosttune-model.json", *words)


def _result(throughput=100.0, samples=(1.0, 2.0)):
    run_ = {"throughput": throughput, "latency_ms": {"p99": 2.0}, "samples_ms": list(samples)}
    return {"schema": "hosttune.bench/1", "instances": [{"name": "node0", "runs": [run_]}],
            "aggregate": {"throughput": {"values": [throughput]}, "p99_ms": {"values": [2.0]}}}


@pytest.mark.parametrize("text, words", [
    (json.dumps(_result()).replace("100.0", "1e999", 1), ["instances[0].runs[0].throughput: must be a finite number"]),
    (json.dumps(_result(float("nan"))), ["throughput: must be a finite number, got nan"]),
    (json.dumps(_result(samples=[1.0, float("inf")])), ["instances[0].runs[0].samples_ms[1]"]),
    (json.dumps(_result(True)), ["throughput: must be a finite number, got True"]),
    ('{"schema": "hosttune.bench/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested deeper"]),
])
def test_bench_results_are_held_to_their_schema(tmp_path, text, words):
    (tmp_path / "bad.json").write_text(text)
    (tmp_path / "good.json").write_text(json.dumps(_result()))
    r = run("bench", "compare", str(tmp_path / "good.json"), str(tmp_path / "bad.json"), "--html",
            str(tmp_path / "c.html"), timeout=60)
    one_line_exit_2(r, "bad.json", *words)
