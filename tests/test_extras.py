"""A base install (no extras) running a command that needs one: one line naming the extra, exit 2.
The CLI runs in a subprocess whose sys.meta_path hides every module of the extras, the way a venv
with only the wheel and pyyaml has none of them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest

from hosttune.extras import EXTRA_OF
from tests.conftest import REPO

HIDE = """
import importlib.abc, sys
HIDDEN = set(sys.argv[1].split(","))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from hosttune.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def run_without(hidden, *argv, tmp_path):
    model = tmp_path / "models" / "m" / "1"  # a model for `serve` to find: it is read after openvino's import
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.onnx").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": REPO, "HOSTTUNE_MODEL_REPO": str(tmp_path / "models")}
    return subprocess.run([sys.executable, "-c", HIDE, ",".join(hidden), *argv], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(tmp_path))


BASE_LACKS = sorted(EXTRA_OF)  # the base install has none of the extras' modules


@pytest.mark.parametrize("argv, extra", [
    (["model", "sample", "--name", "s"], "serve"),
    (["serve", "--root", "/nonexistent-root-is-not-read-first", "--port", "0"], "serve"),
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
    assert lines[0].startswith(f"hosttune: error: hosttune {argv[0]} needs the '{extra}' extra"), lines[0]


def test_a_missing_module_of_no_extra_still_surfaces(tmp_path):
    """Only the extras' modules are translated: a missing module of hosttune itself is a bug and keeps
    its traceback."""
    proc = run_without(["hosttune.model.repo"], "model", "sample", "--name", "s", tmp_path=tmp_path)
    assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, proc.stderr


def test_every_requirement_of_the_extras_maps_to_its_extra():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    import_name = {"pysimdjson": "simdjson", "ansible-core": "ansible", "ansible-runner": "ansible_runner"}
    for extra in ("serve", "inference", "fleet"):
        for req in extras[extra]:
            dist = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
            if dist == "hosttune":
                continue  # inference = hosttune[serve] + ...
            module = import_name.get(dist, dist.replace("-", "_"))
            assert EXTRA_OF.get(module) == extra, (extra, req)
