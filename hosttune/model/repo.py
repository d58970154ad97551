"""The model repository, in the OVMS layout: `<repo>/<name>/<version>/model.xml|.bin` (or .onnx).

`prepare` converts an ONNX file or an OpenVINO IR into the layout, optionally reshaped to a static
shape, keeps the FP32/FP16 baseline as `<name>` and writes an INT8 variant beside it as
`<name>-int8` (NNCF post-training quantization), after checking from the compiled model's runtime
graph that the INT8 variant really executes in INT8. Everything is built in a temporary directory
inside the repository and renamed into place at the end: a failure leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from hosttune import numbers
from hosttune.errors import HosttuneError
from hosttune.model import NAME_RE  # one rule for names, light to import

META = "hosttune-model.json"
META_SCHEMA = "hosttune.model/1"
PRECISIONS = ("FP32", "FP16")
MAX_VERSION = 2**31 - 1  # OVMS's version numbers are int64; hosttune's plans and URLs keep to int32
MAX_DIM = 2**31 - 1
INT8_SUFFIX = "-int8"


@dataclass
class ModelEntry:
    name: str
    version: int
    path: str  # the .xml or .onnx file
    directory: str
    meta: dict[str, Any]


def ov_error_text(exc: BaseException, limit: int = 300) -> str:
    """The useful part of an OpenVINO exception (its first lines name C++ source files)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not re.match(r"^(Exception from |\[ GENERAL_ERROR \]$)", ln)]
    text = " ".join(useful or lines) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def native_stderr_quiet():
    """Silence what native libraries (protobuf/absl in the ONNX frontend) write straight to fd 2
    while a model is read; our own error message says what went wrong."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


# -- reading the repository ---------------------------------------------------------------------
def model_file(version_dir: str) -> str:
    """The model file of a version directory: one .xml (with its .bin) or one .onnx."""
    try:
        names = sorted(os.listdir(version_dir))
    except OSError as exc:
        raise HosttuneError(f"cannot read the model directory: {exc.strerror}", where=version_dir) from None
    xml = [n for n in names if n.endswith(".xml")]
    onnx = [n for n in names if n.endswith(".onnx")]
    if len(xml) > 1 or (not xml and len(onnx) > 1):
        raise HosttuneError(f"more than one model file ({', '.join(xml or onnx)}); keep one per version",
                            where=version_dir)
    if xml:
        path = os.path.join(version_dir, xml[0])
        weights = path[:-4] + ".bin"
        if not os.path.exists(weights):
            raise HosttuneError(f"{xml[0]} has no weights file {os.path.basename(weights)} beside it",
                                where=version_dir)
        for f in (path, weights):
            if not os.access(f, os.R_OK):
                raise HosttuneError("model file is not readable", where=f)
        return path
    if onnx:
        path = os.path.join(version_dir, onnx[0])
        if not os.access(path, os.R_OK):
            raise HosttuneError("model file is not readable", where=path)
        return path
    raise HosttuneError("no model file (.xml/.bin or .onnx) in the version directory", where=version_dir)


def versions(repo: str, name: str) -> list[int]:
    base = os.path.join(repo, name)
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise HosttuneError(f"cannot read: {exc.strerror}", where=base) from None
    # a version directory is named in ASCII digits: '²' or '١' (Arabic-Indic one) is not version 1
    found = ((numbers.uint_or_none(e, MAX_VERSION), e) for e in entries)
    return sorted(v for v, e in found if v is not None and os.path.isdir(os.path.join(base, e)))


def list_models(repo: str) -> dict[str, list[int]]:
    """Model names in the repository with their numeric versions."""
    try:
        entries = sorted(os.listdir(repo))
    except FileNotFoundError:
        raise HosttuneError("model repository does not exist", where=repo) from None
    except OSError as exc:
        raise HosttuneError(f"cannot read the model repository: {exc.strerror}", where=repo) from None
    found = {}
    for entry in entries:
        if entry.startswith(".") or not os.path.isdir(os.path.join(repo, entry)):
            continue
        vs = versions(repo, entry)
        if vs:
            found[entry] = vs
    return found


def find(repo: str, name: str, version: int | None = None) -> ModelEntry:
    """The model `name` (its highest version unless `version` is given)."""
    if not os.path.isdir(repo):
        raise HosttuneError("model repository does not exist", where=repo)
    vs = versions(repo, name)
    if not vs:
        known = ", ".join(list_models(repo)) or "none"
        raise HosttuneError(f"no model {name!r} (with a numeric version directory) in the repository "
                            f"(models: {known})", where=repo)
    if version is None:
        version = vs[-1]
    elif version not in vs:
        raise HosttuneError(f"model {name!r} has no version {version} (versions: {vs})", where=repo)
    directory = os.path.join(repo, name, str(version))
    path = model_file(directory)
    meta: dict[str, Any] = {}
    if os.path.exists(os.path.join(directory, META)):  # optional; when there, it holds to its schema
        from hosttune import safejson
        from hosttune.model import meta_schema

        meta = safejson.load_file(os.path.join(directory, META), meta_schema())
    return ModelEntry(name, version, path, directory, meta)


def read_model(core: Any, path: str) -> Any:
    """Read an IR or ONNX file; any failure is one HosttuneError naming the file."""
    if not os.path.exists(path):
        raise HosttuneError("no such file", where=path)
    if not os.access(path, os.R_OK):
        raise HosttuneError("file is not readable", where=path)
    if path.endswith(".xml") and not os.path.exists(path[:-4] + ".bin"):
        raise HosttuneError(f"IR without its weights file {os.path.basename(path[:-4])}.bin", where=path)
    try:
        with native_stderr_quiet():
            model = core.read_model(path)
    except Exception as exc:  # openvino raises RuntimeError/generic exceptions with long texts
        raise HosttuneError(f"not a readable ONNX or OpenVINO IR model: {ov_error_text(exc)}", where=path) from None
    _name_ports(model)
    return model


def _name_ports(model: Any) -> None:
    for kind, ports in (("input", model.inputs), ("output", model.outputs)):
        for i, port in enumerate(ports):
            if not port.get_names():
                port.get_tensor().set_names({f"{kind}_{i}"})


# -- writing ------------------------------------------------------------------------------------
def parse_shapes(specs: list[str] | None, model: Any) -> dict[str, list[int]]:
    """`--static-shape` values: "1,3,224,224" (single-input models) or "name:1,3,224,224"."""
    shapes: dict[str, list[int]] = {}
    names = [p.get_any_name() for p in model.inputs]
    for spec in specs or []:
        for part in filter(None, (s.strip() for s in spec.split(";"))):
            name, sep, dims = part.rpartition(":")
            if not sep:
                if len(names) != 1:
                    raise HosttuneError(f"the model has {len(names)} inputs ({', '.join(names)}): "
                                        f"write NAME:DIMS", where="--static-shape")
                name = names[0]
            if name not in names:
                raise HosttuneError(f"no input {name!r} (inputs: {', '.join(names)})", where="--static-shape")
            shape = [numbers.uint_or_none(d.strip(), MAX_DIM) for d in dims.strip("[]() ").split(",")]
            if None in shape:
                raise HosttuneError(f"{part!r} is not a list of integers like 1,3,224,224 (ASCII digits, "
                                    f"each at most {MAX_DIM})", where="--static-shape")
            if not shape or any(d <= 0 for d in shape):  # type: ignore[operator]
                raise HosttuneError(f"{part!r}: dimensions must be positive", where="--static-shape")
            shapes[name] = shape
    return shapes


def reshape(model: Any, shapes: dict[str, list[int]]) -> None:
    if not shapes:
        return
    for port in model.inputs:
        name = port.get_any_name()
        if name in shapes and port.get_partial_shape().rank.is_static \
                and len(shapes[name]) != port.get_partial_shape().rank.get_length():
            raise HosttuneError(f"input {name!r} has rank {port.get_partial_shape().rank.get_length()} "
                                f"({port.get_partial_shape()}); {shapes[name]} does not fit", where="--static-shape")
    try:
        model.reshape(shapes)
    except Exception as exc:
        raise HosttuneError(f"shape {shapes} does not fit the model: {ov_error_text(exc)}",
                            where="--static-shape") from None


def _static_shape(port: Any, where: str) -> list[int]:
    ps = port.get_partial_shape()
    if not ps.is_static:
        raise HosttuneError(f"input {port.get_any_name()!r} has a dynamic shape {ps}: give --static-shape "
                            f"so calibration data can be made", where=where)
    return [int(d) for d in ps.to_shape()]


def calibration_data(model: Any, spec: str | None) -> list[dict[str, Any]]:
    """`--calibration`: `synthetic` / `synthetic:N` (default 32 seeded samples), a .npy file
    ([N, *input_shape], single-input models) or a .npz file (one [N, *shape] array per input name)."""
    import numpy as np

    from hosttune.model import sample

    spec = spec or "synthetic"
    for port in model.inputs:
        _static_shape(port, "--calibration")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        count = 32
        if ":" in spec:
            count = numbers.uint_or_none(spec.split(":", 1)[1])  # type: ignore[assignment]
            if count is None:
                raise HosttuneError(f"{spec!r}: expected synthetic:N", where="--calibration")
            if not 1 <= count <= 10000:
                raise HosttuneError("synthetic:N needs 1 <= N <= 10000", where="--calibration")
        return sample.calibration_inputs(model, count)
    if not os.path.exists(spec):
        raise HosttuneError("no such file (expected synthetic[:N], a .npy or a .npz file)", where=spec)
    try:
        loaded = np.load(spec, allow_pickle=False)
    except Exception as exc:
        raise HosttuneError(f"not a numpy .npy/.npz file: {exc}", where=spec) from None
    names = [p.get_any_name() for p in model.inputs]
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise HosttuneError(f"a .npy file feeds single-input models; this one has {len(names)} inputs: "
                                f"use a .npz with arrays {', '.join(names)}", where=spec)
        arrays = {names[0]: loaded}
    else:
        missing = [n for n in names if n not in loaded.files]
        if missing:
            raise HosttuneError(f"no array for input(s) {', '.join(missing)} (arrays: {', '.join(loaded.files)})",
                                where=spec)
        arrays = {n: loaded[n] for n in names}
    count = None
    for port in model.inputs:
        name = port.get_any_name()
        arr = arrays[name]
        want = _static_shape(port, spec)
        if list(arr.shape[1:]) != want:
            raise HosttuneError(f"calibration array {name!r} has shape {list(arr.shape)}; expected "
                                f"[N, {', '.join(map(str, want))}]", where=spec)
        if count is not None and arr.shape[0] != count:
            raise HosttuneError("calibration arrays have different sample counts", where=spec)
        count = arr.shape[0]
        arrays[name] = arr.astype(port.get_element_type().to_dtype(), copy=False)
    if not count:
        raise HosttuneError("no calibration samples", where=spec)
    return [{n: arrays[n][i] for n in names} for i in range(count)]


def quantize_int8(model: Any, data: list[dict[str, Any]]) -> Any:
    """NNCF post-training quantization (fast bias correction) on the given samples."""
    try:
        import nncf
    except ImportError:
        raise HosttuneError("INT8 needs NNCF: pip install nncf", where="--int8") from None
    import logging

    nncf.set_log_level(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), fast_bias_correction=True)
    except HosttuneError:
        raise
    except Exception as exc:
        raise HosttuneError(f"quantization failed: {ov_error_text(exc)}", where="--int8") from None


def _ports(model: Any) -> dict[str, list[dict[str, Any]]]:
    from hosttune.model.types import kserve_datatype

    def row(port: Any) -> dict[str, Any]:
        ps = port.get_partial_shape()
        shape = [int(d.get_length()) if d.is_static else -1 for d in ps] if ps.rank.is_static else None
        try:
            dt = kserve_datatype(port.get_element_type())
        except ValueError:
            dt = str(port.get_element_type())
        return {"name": port.get_any_name(), "datatype": dt, "shape": shape}

    return {"inputs": [row(p) for p in model.inputs], "outputs": [row(p) for p in model.outputs]}


def _sha256(path: str) -> str | None:
    if not path or not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_version(core: Any, model: Any, out_dir: str, meta: dict[str, Any], fp16: bool,
                   expect_int8: bool) -> dict[str, Any]:
    import openvino as ov

    from hosttune.model.precision import check_int8, runtime_precision

    os.makedirs(out_dir)
    xml = os.path.join(out_dir, "model.xml")
    try:
        ov.save_model(model, xml, compress_to_fp16=fp16)
    except Exception as exc:
        raise HosttuneError(f"cannot write the IR: {ov_error_text(exc)}", where=out_dir) from None
    # compile what was written: catches an IR that does not load, and records the runtime precision
    try:
        compiled = core.compile_model(core.read_model(xml), "CPU")
    except Exception as exc:
        raise HosttuneError(f"the converted model does not compile on CPU: {ov_error_text(exc)}",
                            where=meta["name"]) from None
    runtime = check_int8(compiled, where=meta["name"]) if expect_int8 else runtime_precision(compiled)
    meta = {**meta, **_ports(model), "runtime": {k: v for k, v in runtime.items() if k != "compute"}}
    with open(os.path.join(out_dir, META), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def prepare(src: str, name: str, repo: str, version: int = 1, static_shape: list[str] | None = None,
            precision: str = "FP32", int8: bool = False, calibration: str | None = None,
            force: bool = False, model: Any = None, source_label: str | None = None) -> list[dict[str, Any]]:
    """Write `src` (or an in-memory `model`) into the repository; returns the metadata written."""
    import openvino as ov

    if not NAME_RE.fullmatch(name or ""):
        raise HosttuneError(f"{name!r} is not a usable model name (letters, digits, _ . -)", where="--name")
    if precision.upper() not in PRECISIONS:
        raise HosttuneError(f"unknown precision {precision!r} (choose {' or '.join(PRECISIONS)}; INT8 is "
                            f"--int8, written beside the baseline)", where="--precision")
    precision = precision.upper()
    if version < 1:
        raise HosttuneError("versions are positive integers", where="--version")
    targets = [(name, precision)] + ([(name + INT8_SUFFIX, "INT8")] if int8 else [])
    for target, _ in targets:
        final = os.path.join(repo, target, str(version))
        if os.path.exists(final) and not force:
            raise HosttuneError(f"{target} version {version} already exists (use --force to replace it, "
                                f"or --version)", where=final)
    core = ov.Core()
    if model is None:
        model = read_model(core, src)
    else:
        _name_ports(model)
    reshape(model, parse_shapes(static_shape, model))
    data = calibration_data(model, calibration) if int8 else None
    try:
        os.makedirs(repo, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".hosttune-tmp-", dir=repo)
    except OSError as exc:
        raise HosttuneError(f"cannot write to the model repository: {exc.strerror}", where=repo) from None
    written: list[tuple[str, str]] = []
    try:
        common = {
            "schema": META_SCHEMA, "version": version,
            "source": source_label or os.path.abspath(src), "source_sha256": _sha256(src) if src else None,
            "static_shape": static_shape or None,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "openvino_version": ov.get_version(),
        }
        metas = [_write_version(core, model, os.path.join(tmp, name), {**common, "name": name,
                                "precision": precision}, fp16=precision == "FP16", expect_int8=False)]
        if int8:
            quantized = quantize_int8(model, data or [])
            metas.append(_write_version(core, quantized, os.path.join(tmp, name + INT8_SUFFIX),
                                        {**common, "name": name + INT8_SUFFIX, "precision": "INT8",
                                         "baseline": name, "calibration": calibration or "synthetic",
                                         "calibration_samples": len(data or [])},
                                        fp16=False, expect_int8=True))
        # every variant is complete: move them into place
        for target, _ in targets:
            final = os.path.join(repo, target, str(version))
            os.makedirs(os.path.join(repo, target), exist_ok=True)
            if os.path.exists(final):
                old = os.path.join(tmp, f"old-{target}")
                os.rename(final, old)
            os.rename(os.path.join(tmp, target), final)
            written.append((target, final))
        return metas
    except OSError as exc:
        for target, final in written:  # roll back what was already moved
            shutil.rmtree(final, ignore_errors=True)
        raise HosttuneError(f"cannot write the model: {exc.strerror}", where=repo) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sample(repo: str, variant: str = "sample", name: str | None = None, int8: bool = True,
           version: int = 1, force: bool = False, calibration: str | None = None) -> list[dict[str, Any]]:
    """Build the sample model (+ its INT8 variant) into the repository."""
    from hosttune.model import sample as sample_mod

    if variant not in sample_mod.NAMES:
        raise HosttuneError(f"unknown variant {variant!r} (known: {', '.join(sample_mod.NAMES)})", where="--variant")
    model = sample_mod.build(variant)
    return prepare("", name or variant, repo, version=version, int8=int8 and variant != "trivial",
                   calibration=calibration or "synthetic:32", force=force, model=model,
                   source_label=f"hosttune.model.sample:{variant} seed={sample_mod.SEED}")
