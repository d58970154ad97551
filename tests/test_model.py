"""The model repository: sample model, prepare (IR / ONNX, static shapes, INT8), runtime precision."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from hosttune.errors import HosttuneError  # noqa: E402
from hosttune.model import precision, repo, sample  # noqa: E402

HOSTTUNE = [sys.executable, "-m", "hosttune"]


def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*HOSTTUNE, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def tree(path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(out)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    repo.sample(str(path), variant="tiny", int8=True, calibration="synthetic:8")
    return path


def test_sample_is_deterministic_and_costs_what_it_says():
    core = ov.Core()
    x = sample.calibration_inputs(sample.build("tiny"), 1)[0]["input"]
    a = core.compile_model(sample.build("tiny"), "CPU").create_infer_request().infer({0: x})[0]
    b = core.compile_model(sample.build("tiny"), "CPU").create_infer_request().infer({0: x})[0]
    assert np.array_equal(a, b)
    assert a.shape == (1, 10) and abs(float(a.sum()) - 1) < 1e-4  # softmax
    other = core.compile_model(sample.build("tiny", seed=1), "CPU").create_infer_request().infer({0: x})[0]
    assert not np.array_equal(a, other)
    # the full sample is a real conv net: > 100 MFLOP worth of convolutions
    m = sample.build("sample")
    convs = [op for op in m.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert len(convs) >= 10
    assert list(m.inputs[0].shape) == [1, 3, 112, 112]


def test_sample_layout_and_int8_really_runs_int8(tiny_repo, cpu_float_precision):
    files = tree(tiny_repo)
    assert "tiny/1/model.xml" in files and "tiny/1/model.bin" in files
    assert "tiny-int8/1/model.xml" in files and "tiny-int8/1/hosttune-model.json" in files
    assert not [f for f in files if ".hosttune-tmp" in f]
    meta = json.loads((tiny_repo / "tiny-int8" / "1" / "hosttune-model.json").read_text())
    assert meta["precision"] == "INT8" and meta["baseline"] == "tiny"
    assert meta["runtime"]["execution_precision"] == "INT8"
    assert meta["runtime"]["int8_layers"] == meta["runtime"]["compute_layers"] > 0
    base = json.loads((tiny_repo / "tiny" / "1" / "hosttune-model.json").read_text())
    assert base["runtime"]["execution_precision"] == cpu_float_precision and base["runtime"]["int8_layers"] == 0


def test_int8_check_catches_a_model_that_fell_back_to_fp32(tiny_repo, tmp_path, cpu_float_precision):
    core = ov.Core()
    fp32 = core.compile_model(core.read_model(str(tiny_repo / "tiny" / "1" / "model.xml")), "CPU")
    with pytest.raises(HosttuneError, match="does not execute in INT8"):
        precision.check_int8(fp32, where="tiny")
    int8 = core.compile_model(core.read_model(str(tiny_repo / "tiny-int8" / "1" / "model.xml")), "CPU")
    assert precision.check_int8(int8)["execution_precision"] == "INT8"
    # an "INT8" model whose graph is FP32 (copied under the int8 name): the CLI check fails
    fake = tmp_path / "fake-int8" / "1"
    fake.mkdir(parents=True)
    for name in ("model.xml", "model.bin"):
        (fake / name).write_bytes((tiny_repo / "tiny" / "1" / name).read_bytes())
    r = cli("model", "check", "fake-int8", "--repo", str(tmp_path), "--expect", "INT8")
    assert r.returncode == 1, r.stderr
    assert f"executes in {cpu_float_precision}" in r.stdout
    r = cli("model", "check", "tiny-int8", "--repo", str(tiny_repo), "--expect", "INT8", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["execution_precision"] == "INT8"


def test_prepare_ir_with_static_shape_and_fp16(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    m = sample.build("tiny")
    m.reshape({"input": ov.PartialShape([-1, 3, 32, 32])})  # dynamic batch
    ov.save_model(m, str(src / "net.xml"))
    out = tmp_path / "repo"
    r = cli("model", "prepare", str(src / "net.xml"), "--name", "net", "--repo", str(out),
            "--static-shape", "2,3,32,32", "--precision", "fp16", "--version", "3", "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)[0]
    assert meta["inputs"][0]["shape"] == [2, 3, 32, 32] and meta["precision"] == "FP16"
    got = ov.Core().read_model(str(out / "net" / "3" / "model.xml"))
    assert list(got.inputs[0].shape) == [2, 3, 32, 32]
    # the same version again is refused, --force replaces it
    assert cli("model", "prepare", str(src / "net.xml"), "--name", "net", "--repo", str(out),
               "--static-shape", "2,3,32,32", "--version", "3").returncode == 2
    assert cli("model", "prepare", str(src / "net.xml"), "--name", "net", "--repo", str(out),
               "--static-shape", "1,3,32,32", "--version", "3", "--force").returncode == 0
    assert list(ov.Core().read_model(str(out / "net" / "3" / "model.xml")).inputs[0].shape) == [1, 3, 32, 32]


def test_prepare_onnx_with_int8_and_npy_calibration(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    w2 = numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "net.onnx"
    onnx.save(model, str(path))
    calib = tmp_path / "calib.npy"
    np.save(calib, rng.random((6, 1, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "repo"
    r = cli("model", "prepare", str(path), "--name", "conv", "--repo", str(out), "--int8",
            "--calibration", str(calib), "--json")
    assert r.returncode == 0, r.stderr
    metas = json.loads(r.stdout)
    assert [m["name"] for m in metas] == ["conv", "conv-int8"]
    assert metas[1]["runtime"]["execution_precision"] == "INT8" and metas[1]["calibration_samples"] == 6
    assert (out / "conv" / "1" / "model.xml").exists() and (out / "conv-int8" / "1" / "model.bin").exists()
    # calibration data of the wrong shape: one error, nothing written
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 1, 3, 8, 8), np.float32))
    out2 = tmp_path / "repo2"
    r = cli("model", "prepare", str(path), "--name", "conv", "--repo", str(out2), "--int8", "--calibration", str(bad))
    assert r.returncode == 2 and "expected [N, 1, 3, 16, 16]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert tree(out2) == []


@pytest.mark.parametrize("args, message", [
    (["--precision", "INT4"], "unknown precision"),
    (["--static-shape", "1,3,32"], "does not fit"),
    (["--static-shape", "1,3,x,32"], "not a list of integers"),
    (["--name", "bad/name"], "not a usable model name"),
])
def test_prepare_bad_input_is_one_error_and_writes_nothing(tiny_repo, tmp_path, args, message):
    out = tmp_path / "repo"
    base = ["model", "prepare", str(tiny_repo / "tiny" / "1" / "model.xml"), "--repo", str(out)]
    if "--name" not in args:
        base += ["--name", "m"]
    r = cli(*base, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() or tree(out) == []


def test_prepare_not_a_model(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model\n" * 10)
    out = tmp_path / "repo"
    r = cli("model", "prepare", str(junk), "--name", "junk", "--repo", str(out))
    assert r.returncode == 2 and "not a readable ONNX or OpenVINO IR model" in r.stderr
    assert not out.exists() or tree(out) == []
    r = cli("model", "prepare", str(tmp_path / "missing.xml"), "--name", "x", "--repo", str(out))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_repository_lookup_errors(tmp_path):
    with pytest.raises(HosttuneError, match="does not exist"):
        repo.find(str(tmp_path / "nope"), "m")
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(HosttuneError, match="no model file"):
        repo.find(str(tmp_path), "m")
    (tmp_path / "m" / "1" / "model.xml").write_text("<net/>")
    with pytest.raises(HosttuneError, match="no weights file"):
        repo.find(str(tmp_path), "m")
    with pytest.raises(HosttuneError, match="no model 'other'"):
        repo.find(str(tmp_path), "other")


def test_policy_f32_keeps_fp32_execution_on_any_cpu(tiny_repo):
    """instances.inference_precision: f32 puts INFERENCE_PRECISION_HINT in the plan's OpenVINO
    properties, and OpenVINO then runs the FP32 model in FP32 (BF16 by default on AVX512-BF16)."""
    from hosttune import plan as plan_mod
    from hosttune import policy as policy_mod

    props = plan_mod._openvino(policy_mod.validate({"instances": {"inference_precision": "f32"}}), 1, 1)[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(tiny_repo / "tiny" / "1" / "model.xml")), "CPU", props)
    assert precision.runtime_precision(compiled)["execution_precision"] == "FP32"


# -- the 50 % INT8 rule (precision.INT8_MIN_SHARE) on real partially quantized models -----------------
def conv_chain(n: int) -> ov.Model:
    """n 3x3 convolutions with ReLU: n compute layers, named conv0..conv{n-1}."""
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 8, 16, 16], np.float32, name="input")
    y = x
    for i in range(n):
        w = ops.constant((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32))
        y = ops.relu(ops.convolution(y, w, [1, 1], [1, 1], [1, 1], [1, 1], name=f"conv{i}"))
    return ov.Model([y], [x], "chain")


def quantize_all_but(model: ov.Model, skip: int) -> ov.Model:
    """NNCF quantization that leaves the first `skip` convolutions in floating point (what a model
    NNCF cannot fully quantize looks like)."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    data = [{"input": np.random.default_rng(i).random((1, 8, 16, 16)).astype(np.float32)} for i in range(4)]
    return nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), fast_bias_correction=True,
                         ignored_scope=nncf.IgnoredScope(names=[f"conv{i}" for i in range(skip)]))


@pytest.mark.parametrize("layers, skip, int8", [(4, 2, True), (7, 4, False), (7, 3, True)])
def test_int8_needs_half_of_the_compute_layers(tmp_path, cpu_float_precision, layers, skip, int8):
    """2 of 4 compute layers in u8 (50 %) is INT8; 3 of 7 (43 %) is not; 4 of 7 (57 %) is."""
    quantized = quantize_all_but(conv_chain(layers), skip)
    summary = precision.runtime_precision(ov.Core().compile_model(quantized, "CPU"))
    assert (summary["int8_layers"], summary["compute_layers"]) == (layers - skip, layers)
    assert summary["execution_precision"] == ("INT8" if int8 else cpu_float_precision)
    # `hosttune model check --expect INT8` on the same graph saved into a repository
    ov.save_model(quantized, str(tmp_path / "chain-int8" / "1" / "model.xml"))
    r = cli("model", "check", "chain-int8", "--repo", str(tmp_path), "--expect", "INT8")
    assert r.returncode == (0 if int8 else 1), r.stdout + r.stderr
    assert f"executes in {'INT8' if int8 else cpu_float_precision} ({layers - skip}/{layers} compute" in r.stdout


def test_prepare_fails_and_writes_nothing_when_int8_falls_short(tmp_path, monkeypatch, cpu_float_precision):
    """An INT8 variant below the 50 % share fails prepare; the repository stays as it was, even
    with --force over an existing version (the baseline built beside it is not moved in either)."""
    out = tmp_path / "repo"
    repo.prepare("", "chain", str(out), int8=True, calibration="synthetic:4", model=conv_chain(7),
                 source_label="first")
    before = {f: (out / f).read_bytes() for f in tree(out) if (out / f).is_file()}
    assert "chain-int8/1/model.xml" in before
    # NNCF leaving 4 of the 7 convolutions in floating point: 3/7 < 50 %
    monkeypatch.setattr(repo, "quantize_int8", lambda model, data: quantize_all_but(model, 4))
    with pytest.raises(HosttuneError, match=f"3 of 7 compute layers run in i8/u8.*fell back to {cpu_float_precision}"):
        repo.prepare("", "chain", str(out), int8=True, calibration="synthetic:4", model=conv_chain(7),
                     force=True, source_label="second")
    assert {f: (out / f).read_bytes() for f in tree(out) if (out / f).is_file()} == before
    assert not [f for f in tree(out) if ".hosttune-tmp" in f]
    fresh = tmp_path / "fresh"
    with pytest.raises(HosttuneError, match="does not execute in INT8"):
        repo.prepare("", "chain", str(fresh), int8=True, calibration="synthetic:4", model=conv_chain(7))
    assert tree(fresh) == []
