"""Which `hosttune[extra]` provides a third-party module: a command that needs a module the base
install lacks (openvino, uvicorn, ansible_runner, ...) fails with one line naming the extra to
install, not a ModuleNotFoundError traceback. Used once, where the CLI dispatches a command
(hosttune.cli.main), so every handler's lazy heavy import is covered."""

from __future__ import annotations

from hosttune.errors import HosttuneError

# top-level import name -> the extra (pyproject.toml [project.optional-dependencies]) that brings it;
# tests/test_collection.py checks every requirement of these extras is named here
EXTRA_OF = {
    "openvino": "serve",
    "numpy": "serve",
    "uvicorn": "serve",
    "simdjson": "serve",  # pysimdjson
    "orjson": "serve",
    "httptools": "serve",
    "grpc": "serve",  # grpcio
    "google": "serve",  # protobuf (google.protobuf)
    "onnxruntime": "onnxruntime",
    "tvm": "tvm",  # apache-tvm
    "nncf": "inference",
    "ansible": "fleet",  # ansible-core
    "ansible_runner": "fleet",
    "fabric": "fleet",
    "psutil": "fleet",
    "bcrypt": "web",
}


def missing_extra(exc: ModuleNotFoundError, command: str | None = None) -> HosttuneError | None:
    """The error to show for `exc`, or None when the missing module belongs to no extra (a bug:
    let it surface as it is)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    what = f"hosttune {command}" if command else "this command"
    return HosttuneError(f"{what} needs the '{extra}' extra ({top} is not installed): "
                         f"pip install 'hosttune[{extra}]'")
