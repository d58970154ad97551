"""Where the testbed keeps things, and the testbed SSH key.

- ${HOSTTUNE_CACHE:-/var/cache/hosttune} (or ~/.cache/hosttune when that is not writable):
  images/<recipe hash>/disk.qcow2, images/<hash>.lock, ssh/id_ed25519.
- ${HOSTTUNE_RUN:-/tmp/hosttune-testbed}/<guest name>/: state.json, overlay.qcow2, console.log,
  qmp.sock, qemu.pid, qemu.log - what another process needs to reach or stop the guest.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from hosttune_testbed.errors import GuestError


def cache_dir() -> Path:
    env = os.environ.get("HOSTTUNE_CACHE")
    if env:
        path = Path(env)
    else:
        path = Path("/var/cache/hosttune")
        if not _writable(path):
            path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hosttune"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_root() -> Path:
    path = Path(os.environ.get("HOSTTUNE_RUN") or "/tmp/hosttune-testbed")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


@contextmanager
def file_lock(path: Path):
    """An exclusive flock held for the duration of the block (blocks until free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ssh_key() -> Path:
    """The testbed's private key (created on first use); its .pub goes into every image."""
    key = cache_dir() / "ssh" / "id_ed25519"
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(key.parent / ".lock"):
        if not key.exists():
            proc = subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hosttune-testbed",
                 "-f", str(key)],
                capture_output=True, text=True,
            )
            if proc.returncode:
                raise GuestError(f"ssh-keygen failed: {proc.stderr.strip()}")
        os.chmod(key, 0o600)
    return key


def ssh_public_key() -> str:
    return ssh_key().with_suffix(".pub").read_text().strip()
