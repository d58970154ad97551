"""A base install (no extras) running a command that needs one: one line naming the extra, exit 2.
The CLI runs in a subprocess where a sitecustomize's sys.meta_path hook hides every module of the
extras (in the bench workers it starts too), the way a venv with only the wheel and pyyaml has none
of them (checked by hand with such a venv: the same lines)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest

from hosttune.extras import EXTRA_OF
from tests.conftest import REPO

# sitecustomize, first on PYTHONPATH: the CLI and every Python it starts (the bench workers) hide them
HIDE = """
import importlib.abc, os, sys
HIDDEN = set(os.environ["HOSTTUNE_TEST_HIDE"].split(","))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
"""


def run_without(hidden, *argv, tmp_path):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE)
    model = tmp_path / "models" / "m" / "1"  # a model for `serve` and `bench` to find: read after openvino's import
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.onnx").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), REPO]), "HOSTTUNE_TEST_HIDE": ",".join(hidden),
           "HOSTTUNE_MODEL_REPO": str(tmp_path / "models")}
    return subprocess.run([sys.executable, "-m", "hosttune", *argv], capture_output=True, text=True, timeout=120,
                          env=env, cwd=str(tmp_path))


BASE_LACKS = sorted(EXTRA_OF)  # the base install has none of the extras' modules


@pytest.mark.parametrize("argv, extra", [
    (["model", "sample", "--name", "s"], "serve"),
    (["serve", "--root", "/nonexistent-root-is-not-read-first", "--rest_port", "0", "--ephemeral-ports"], "serve"),
    (["bench", "--mode", "inprocess", "--model", "m", "--runs", "1", "--duration", "1", "--no-pin"], "serve"),
    (["fleet", "verify", "-i", os.path.join(REPO, "inventory", "localhost")], "fleet"),
    (["bench", "--help"], None),  # help needs no extra
])
def test_a_missing_extra_is_one_line_and_exit_2(tmp_path, argv, extra):
    proc = run_without(BASE_LACKS, *argv, tmp_path=tmp_path)
    if extra is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'hosttune[{extra}]'" in lines[0], proc.stderr
    # bench's worker process says it: the parent names the instance it ran for
    assert re.match(rf"hosttune: error: (node0: )?hosttune {argv[0]} needs the '{extra}' extra", lines[0]), lines[0]


def test_a_missing_module_of_no_extra_still_surfaces(tmp_path):
    """Only the extras' modules are translated: a missing module of hosttune itself is a bug and keeps
    its traceback."""
    proc = run_without(["hosttune.model.repo"], "model", "sample", "--name", "s", tmp_path=tmp_path)
    assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, proc.stderr


def test_every_requirement_of_the_extras_maps_to_its_extra():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    import_name = {"pysimdjson": "simdjson", "ansible-core": "ansible", "ansible-runner": "ansible_runner",
                   "grpcio": "grpc", "protobuf": "google", "apache-tvm": "tvm"}
    for extra in ("serve", "inference", "fleet", "onnxruntime", "tvm"):
        for req in extras[extra]:
            dist = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
            if dist == "hosttune":
                continue  # inference = hosttune[serve] + ...
            module = import_name.get(dist, dist.replace("-", "_"))
            # a module several extras bring (psutil: fleet and tvm) names one of them
            holders = {e for e, reqs in extras.items()
                       if any(re.match(r"[A-Za-z0-9_.-]+", r).group(0) == dist for r in reqs)}
            assert EXTRA_OF.get(module) in holders, (extra, req)
