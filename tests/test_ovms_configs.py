"""Issue 28, part 3: config.json as strict as OVMS. Every file of tests/fixtures/ovms_configs/ goes
through OVMS's own schema (tests/fixtures/ovms_config_schema.json, src/schema.cpp's text, checked
with the jsonschema library as OVMS checks it with rapidjson: draft 04) and through hosttune's
reader (hosttune/serve/ovms_config.read):

    valid/        the schema accepts, hosttune accepts
    invalid/      the schema refuses, hosttune refuses naming the place the schema names
    unsupported/  the schema accepts, hosttune refuses: UNSUPPORTED and the field named
    stricter/     the schema accepts, OVMS then warns and serves the model otherwise (or fails it
                  when loading); hosttune refuses naming the field

No file is ever accepted by hosttune and refused by OVMS, or served while a field is ignored.
"""

from __future__ import annotations

import glob
import json
import os

import jsonschema
import pytest

from hosttune.errors import HosttuneError
from hosttune.serve import ovms_config
from tests.conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures")
CORPUS = os.path.join(FIXTURES, "ovms_configs")
CATEGORIES = ("valid", "invalid", "unsupported", "stricter")
with open(os.path.join(FIXTURES, "ovms_config_schema.json")) as _f:
    OVMS_SCHEMA = json.load(_f)
VALIDATOR = jsonschema.Draft4Validator(OVMS_SCHEMA)

# the field each refusal must name (unsupported/ and stricter/: the schema names none)
NAMED = {
    "unsupported/pipeline": "pipeline_config_list",
    "unsupported/mediapipe_graph": "mediapipe_config_list",
    "unsupported/custom_node_library": "custom_node_library_config_list",
    "unsupported/custom_loader": "custom_loader_config_list",
    "unsupported/custom_loader_options": "model_config_list[0].config.custom_loader_options",
    "unsupported/target_device_gpu": "model_config_list[0].config.target_device",
    "unsupported/target_device_auto": "model_config_list[0].config.target_device",
    "unsupported/target_device_hetero": "model_config_list[0].config.target_device",
    "unsupported/graph_entry_without_base_path": "model_config_list[0].config.base_path",
    "unsupported/graph_path": "model_config_list[0].config.graph_path",
    "unsupported/subconfig": "model_config_list[0].config.subconfig",
    "unsupported/base_path_s3": "model_config_list[0].config.base_path",
    "unsupported/base_path_gcs": "model_config_list[0].config.base_path",
    "unsupported/allow_cache": "model_config_list[0].config.allow_cache",
    "unsupported/no_models": "model_config_list",
    "unsupported/nireq_above_hosttune_bound": "model_config_list[0].config.nireq",
    "stricter/metrics_list_unknown_name": "monitoring.metrics.metrics_list",
    "stricter/shape_letters": "model_config_list[0].config.shape",
    "stricter/shape_without_parentheses": "model_config_list[0].config.shape",
    "stricter/shape_inverted_range": "model_config_list[0].config.shape",
    "stricter/shape_anonymous_name": "model_config_list[0].config.shape.ANONYMOUS_INPUT_NAME",
    "stricter/batch_size_word": "model_config_list[0].config.batch_size",
    "stricter/batch_size_zero": "model_config_list[0].config.batch_size",
    "stricter/batch_size_with_shape": "model_config_list[0].config.batch_size",
    "stricter/layout_bad_letter": "model_config_list[0].config.layout",
    "stricter/layout_letter_twice": "model_config_list[0].config.layout",
    "stricter/layout_three_parts": "model_config_list[0].config.layout",
    "stricter/name_with_a_slash": "model_config_list[0].config.name",
    "stricter/duplicate_model_names": "a model name is used twice",
    "stricter/version_beyond_int32": "model_config_list[0].config.model_version_policy.specific.versions[1]",
    "stricter/batch_size_beyond_int32": "model_config_list[0].config.batch_size",
}


def corpus() -> list[str]:
    return sorted(os.path.relpath(p, CORPUS)[:-5] for p in glob.glob(os.path.join(CORPUS, "*", "*.json")))


def ovms_verdict(path: str) -> jsonschema.ValidationError | None:
    with open(path) as f:
        return jsonschema.exceptions.best_match(VALIDATOR.iter_errors(json.load(f)))


def hosttune_verdict(path: str) -> HosttuneError | None:
    try:
        ovms_config.read(path)
    except HosttuneError as exc:
        return exc
    return None


def place(error: jsonschema.ValidationError) -> str:
    """The schema error's place as hosttune writes a field: a.b[0].c"""
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def test_the_corpus_covers_every_category():
    files = corpus()
    assert {f.split("/")[0] for f in files} == set(CATEGORIES)
    assert len([f for f in files if f.startswith("valid/")]) >= 20
    assert len([f for f in files if f.startswith("invalid/")]) >= 30
    for name in NAMED:
        assert name in files, name  # no stale entry


@pytest.mark.parametrize("name", corpus())
def test_hosttune_gives_ovms_schema_verdict_or_a_named_refusal(name):
    category = name.split("/")[0]
    path = os.path.join(CORPUS, name + ".json")
    schema_error = ovms_verdict(path)
    ours = hosttune_verdict(path)
    if category == "valid":
        assert schema_error is None, schema_error.message
        assert ours is None, str(ours)
        return
    assert ours is not None, f"{name}: hosttune accepts it"  # never a silent ignore
    text = str(ours)
    assert path in text and "\n" not in text
    if category == "invalid":
        assert schema_error is not None, f"{name}: OVMS's schema accepts it"
        assert place(schema_error) in text, (schema_error.message, text)
        assert ovms_config.UNSUPPORTED not in text
        return
    assert schema_error is None, f"{name}: OVMS's schema refuses it: {schema_error.message}"
    assert NAMED[name] in text, text
    if category == "unsupported":
        assert ovms_config.UNSUPPORTED in text, text


def test_issue_28s_file_is_refused_at_the_first_unknown_field():
    """The file of the issue: OVMS says 'Additional properties are not allowed'; so does hosttune,
    naming the field."""
    path = os.path.join(CORPUS, "invalid", "issue_28_lossy_file.json")
    assert "Additional properties are not allowed" in ovms_verdict(path).message
    assert "model_config_list[0].config.nirq: unknown field" in str(hosttune_verdict(path))


def test_what_is_honoured_is_read(tmp_path):
    """The honoured fields come out of the reader with OVMS's meaning."""
    def one(**config):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"model_config_list": [{"config": {"name": "m", "base_path": "models/m", **config}}]}))
        return ovms_config.read(str(path)).models[0]

    model = one()
    assert model.base_path == str(tmp_path / "models" / "m")  # relative to the config file's directory
    assert (model.policy, model.nireq, model.io) == (("latest", 1), None, ovms_config.IOConfig())
    assert one(nireq=0).nireq is None and one(nireq=3).nireq == 3
    assert one(shape="( 1:8, 3,-1,224)").io.shapes == ((None, ((1, 8), (3, 3), (-1, -1), (224, 224))),)
    assert one(shape={"x": "auto"}).io.shapes == (("x", "auto"),)
    assert one(layout="nhwc:nchw").io.layouts == ((None, ("NHWC", "NCHW")),)
    assert one(layout={"y": "NC"}).io.layouts == (("y", (None, "NC")),)
    assert [one(batch_size=b).io.batch for b in (4, "4", "auto", "1:8", "-1")] == [
        (4, 4), (4, 4), "auto", (1, 8), (-1, -1)]
    assert one(model_version_policy={"specific": {"versions": [3, 1, 3]}}).policy == ("specific", (1, 3))
    assert one(model_version_policy={"all": {}}).policy == ("all", None)
    assert one(model_version_policy={"latest": {"num_versions": 2}}).policy == ("latest", 2)


def test_version_policies_choose_among_the_version_directories(tmp_path):
    for v in (1, 2, 5, 10):
        (tmp_path / "m" / str(v)).mkdir(parents=True)
    (tmp_path / "m" / "x").mkdir()  # not a version

    def served(policy):
        model = ovms_config.ModelConfig("m", str(tmp_path / "m"), policy, None, {})
        return model.served_versions()

    assert served(("latest", 1)) == [10]
    assert served(("latest", 3)) == [2, 5, 10]
    assert served(("latest", 9)) == [1, 2, 5, 10]
    assert served(("all", None)) == [1, 2, 5, 10]
    assert served(("specific", (2, 7, 10))) == [2, 10]


def test_the_plans_config_json_passes_ovms_schema(tmp_path):
    from tests.test_serve_ovms import plan_of_a_tree

    plan = plan_of_a_tree(tmp_path, '["trivial:1", tiny]')
    for inst in plan["instances"]:
        config = ovms_config.render(inst, "/models")
        assert not list(VALIDATOR.iter_errors(config))
        path = tmp_path / "config.json"
        path.write_text(ovms_config.dumps(config))
        assert [m.name for m in ovms_config.read(str(path)).models] == ["trivial", "tiny"]


# -- honoured: shape, layout and batch_size reach the compiled model -------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("openvino")
    from hosttune.model import repo as model_repo

    path = tmp_path_factory.mktemp("models")
    model_repo.sample(str(path), variant="trivial", int8=False)
    model_repo.sample(str(path), variant="tiny", int8=False)
    return path


def served(models, name, **config):
    """The model as `hosttune serve` compiles it from a config.json entry with these fields."""
    import asyncio

    import openvino as ov

    from hosttune.serve.engine import ServedModel

    path = os.path.join(str(models), "config.json")
    with open(path, "w") as f:
        json.dump({"model_config_list": [{"config": {"name": name, "base_path": name, **config}}]}, f)
    model = ovms_config.read(path).models[0]
    served = ServedModel(ov.Core(), model.entry(1), {"NUM_STREAMS": 1}, model.nireq, model.io)

    def infer(*arrays):
        return asyncio.run(served.infer(list(arrays)))[0] if served.nireq > 1 else served.infer_now(list(arrays))[0]
    return served, infer


def test_layout_transposes_as_ovms(models):
    import numpy as np

    plain, infer_plain = served(models, "tiny")
    nhwc, infer_nhwc = served(models, "tiny", layout="NHWC:NCHW")
    assert plain.inputs[0].shape == [1, 3, 32, 32] and nhwc.inputs[0].shape == [1, 32, 32, 3]
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(infer_nhwc(x.transpose(0, 2, 3, 1).copy()), infer_plain(x), rtol=1e-4, atol=1e-5)
    # an output's layout too: the client receives TENSOR
    assert served(models, "tiny", layout={"probabilities": "CN:NC"})[0].outputs[0].shape == [10, 1]
    with pytest.raises(HosttuneError, match=r"config.layout.*no input or output 'nope'"):
        served(models, "tiny", layout={"nope": "NCHW"})


def test_shape_and_batch_size_reshape_before_compiling(models):
    import numpy as np

    assert served(models, "tiny", shape="(2,3,32,32)")[0].inputs[0].shape == [2, 3, 32, 32]
    assert served(models, "tiny", shape={"input": "(1:4,3,32,32)"})[0].inputs[0].shape == [-1, 3, 32, 32]
    four, infer = served(models, "tiny", batch_size="4")
    assert four.inputs[0].shape == [4, 3, 32, 32] and infer(np.zeros((4, 3, 32, 32), np.float32)).shape == (4, 10)
    # "auto": compiled once with the dimensions dynamic, so any shape of that rank is taken
    auto, infer = served(models, "trivial", shape="auto")
    assert auto.inputs[0].shape == [-1, -1]
    assert infer(np.ones((3, 16), np.float32)).tolist() == [[2.0] * 16] * 3
    batch_auto, infer = served(models, "trivial", batch_size="auto")
    assert batch_auto.inputs[0].shape == [-1, 16] and infer(np.ones((5, 16), np.float32)).shape == (5, 16)
    # the layout says where N is: batch_size changes that dimension (trivial's constant then refuses it)
    with pytest.raises(HosttuneError, match=r"config.batch_size/layout: OpenVINO cannot apply it.*f32\[1,2\]"):
        served(models, "trivial", batch_size=2, layout="CN")
    with pytest.raises(HosttuneError, match=r"config.shape.*no input 'nope'"):
        served(models, "tiny", shape={"nope": "(1,3,32,32)"})
    with pytest.raises(HosttuneError, match=r"config.shape.*OpenVINO cannot apply it"):
        served(models, "tiny", shape="(1,3)")


def test_hosttune_serve_honours_them_end_to_end(models, tmp_path):
    """`hosttune serve --config-path` with OVMS's string forms: the served model has the shape and
    layout the file asks for, its base_path taken relative to the file."""
    import http.client

    from tests.serverproc import Server

    os.symlink(models, tmp_path / "repo")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_config_list": [{"config": {
        "name": "tiny_nhwc", "base_path": "repo/tiny", "batch_size": "2", "layout": "NHWC:NCHW", "nireq": 0,
        "plugin_config": {"NUM_STREAMS": 1}}}]}))
    srv = Server("--config-path", str(path))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        conn.request("GET", "/v2/models/tiny_nhwc")
        meta = json.loads(conn.getresponse().read())
        assert meta["inputs"][0]["shape"] == [2, 32, 32, 3] and meta["outputs"][0]["shape"] == [2, 10]
        body = json.dumps({"inputs": [{"name": "input", "shape": [2, 32, 32, 3], "datatype": "FP32",
                                       "data": [0.0] * (2 * 32 * 32 * 3)}]})
        conn.request("POST", "/v2/models/tiny_nhwc/infer", body)
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["outputs"][0]["shape"] == [2, 10]
    finally:
        srv.stop()
