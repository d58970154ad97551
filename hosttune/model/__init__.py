"""Model repository (OVMS layout `<repo>/<name>/<version>/`), the locally built sample model,
INT8 quantization and the check that a compiled model really executes in the precision it claims.

Top-level imports stay light: openvino, numpy and nncf are imported inside the functions.
"""

import os
import re

# a model's name: a directory of the repository, a URL path element and an OVMS model name
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_REPO_ENV = "HOSTTUNE_MODEL_REPO"
DEFAULT_REPO = "/var/lib/hosttune/models"


def default_repo() -> str:
    """`$HOSTTUNE_MODEL_REPO`, else /var/lib/hosttune/models (a path argument always wins)."""
    return os.environ.get(DEFAULT_REPO_ENV) or DEFAULT_REPO


def meta_schema() -> object:
    """The schema of a version's hosttune-model.json (what repo.find reads; written by repo.prepare)."""
    from hosttune.safejson import ANY, Int, List, Map, Obj, Opt, Str

    port = Obj({"name": Str(), "datatype": Str(64), "shape": Opt(List(Int(-1, 2**62), 64))}, required=("name",))
    return Obj({"name": Str(255), "version": Int(1, 2**31 - 1), "precision": Opt(Str(64)),
                "inputs": List(port, 10_000), "outputs": List(port, 10_000),
                "runtime": Obj({"execution_precision": Opt(Str(64)), "int8_layers": Opt(Int(0)),
                                "compute_layers": Opt(Int(0)), "by_precision": Map(ANY)})})
