"""Build the collection hosttune.tuning from this checkout with its one documented command
(scripts/build_collection: the agent's wheels inside) and install it into a collections path, the
way a user does with the released tarball (tests/test_collection.py, tests/test_molecule.py)."""

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


def build(dist: Path, env: dict[str, str] | None = None, extras: str = "") -> Path:
    """scripts/build_collection into `dist`: the tarball."""
    proc = subprocess.run([os.path.join(BIN, "python"), os.path.join(REPO, "scripts", "build_collection"),
                           "--output-path", str(dist), *(["--extras", extras] if extras else [])],
                          capture_output=True, text=True, timeout=900, cwd=str(dist.parent), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tarball = dist / f"hosttune-tuning-{version()}.tar.gz"
    assert proc.stdout.strip() == str(tarball) and tarball.is_file(), proc.stdout
    return tarball


def build_and_install(work: Path, env: dict[str, str] | None = None, extras: str = "") -> tuple[Path, Path]:
    """(the tarball, the collections path it was installed into), both under `work`. `extras`: the
    hosttune extras whose wheels the collection carries too (hosttune_agent_extras)."""
    work.mkdir(parents=True, exist_ok=True)
    dist, collections = work / "dist", work / "collections"
    tarball = build(dist, env, extras)
    install = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--force",
                              str(tarball), "-p", str(collections)],
                             capture_output=True, text=True, timeout=300, cwd=str(work), env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    return tarball, collections
