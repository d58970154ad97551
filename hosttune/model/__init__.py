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
