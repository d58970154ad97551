"""Build the collection hosttune.tuning from this checkout and install it into a collections path,
the way a user does with the released tarball (tests/test_collection.py, tests/test_molecule.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.conftest import REPO

BIN = os.path.join(REPO, ".venv", "bin")


def version() -> str:
    with open(os.path.join(REPO, "galaxy.yml")) as f:
        return str(yaml.safe_load(f)["version"])


def build_and_install(work: Path, env: dict[str, str] | None = None) -> tuple[Path, Path]:
    """(the tarball, the collections path it was installed into), both under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    dist, collections = work / "dist", work / "collections"
    run = dict(capture_output=True, text=True, timeout=300, cwd=str(work), env=env)
    build = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force",
                            "--output-path", str(dist), REPO], **run)
    assert build.returncode == 0, build.stdout + build.stderr
    tarball = dist / f"hosttune-tuning-{version()}.tar.gz"
    assert tarball.is_file(), build.stdout
    install = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--force",
                              str(tarball), "-p", str(collections)], **run)
    assert install.returncode == 0, install.stdout + install.stderr
    return tarball, collections
