"""Build hosttune's wheel (and its dependencies' wheels) on the controller, reproducibly.

    build_wheelhouse.py --src CHECKOUT --out DIR [--deps [--extras serve] [--claimed-platform]]

The source tree is copied to a temporary directory first (without .git, .venv, build/ and other
leftovers: stale build/ files would end up in the wheel), and SOURCE_DATE_EPOCH is fixed, so the
same source gives the same wheel, byte for byte: the roles compare checksums to stay idempotent.
The wheels hosts need (hosttune's alone, or with --deps every wheel) are also packed into one
plain tar, wheelhouse.tar: the role sends one file, not one per wheel (each file copied costs a
few module runs, which on a slow host is most of the install).
With --claimed-platform the dependencies are the published binary wheels for the platform the
collection claims (CPython 3.11 on x86_64 glibc 2.36: Debian 12), whatever the controller runs;
without it they are the wheels pip picks (or builds) for the controller's own Python.
Prints JSON, also written to DIR/wheelhouse.json (scripts/build_collection bundles DIR into the
collection): {"hosttune_wheel": name, "sha256": hex, "wheels": [names], "archive": "wheelhouse.tar",
"deps": bool, "extras": [names], "platform": "controller" | "cp311-manylinux_2_36_x86_64"}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                "*.pyc", ".pytest_cache", ".hypothesis", ".benchmarks", ".cache",
                                "artifacts", ".tox", ".mypy_cache", ".ruff_cache")
EPOCH = "315532800"  # 1980-01-01, the earliest date a zip file can hold
ARCHIVE = "wheelhouse.tar"
MANIFEST = "wheelhouse.json"
# The claimed platform (galaxy_info.platforms: Debian 12): its python3 is CPython 3.11, its glibc 2.36.
# pip takes a manylinux tag as that glibc exactly: every older one is listed too.
CLAIMED = "cp311-manylinux_2_36_x86_64"
CLAIMED_PIP = ["--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
               "--abi", "abi3", "--abi", "none",
               *[arg for minor in range(36, 4, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")],
               "--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64",
               "--platform", "manylinux1_x86_64", "--platform", "linux_x86_64"]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"pip {' '.join(args[:1])} failed (exit {proc.returncode})")


def pack(out: str, names: list[str]) -> None:
    """Write out/wheelhouse.tar with the named wheels: flat, root-owned 0644 files, fixed dates."""
    tmp = os.path.join(out, ARCHIVE + ".tmp")
    # wheels are zip files already: compressing them again only costs the host time to unpack
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(os.path.join(out, name), arcname=name)
            info.mode, info.mtime = 0o644, int(EPOCH)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(os.path.join(out, name), "rb") as handle:
                tar.addfile(info, handle)
    os.replace(tmp, os.path.join(out, ARCHIVE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="hosttune source tree (with pyproject.toml)")
    parser.add_argument("--out", required=True, help="directory to put the wheels in (emptied first)")
    parser.add_argument("--deps", action="store_true", help="also build/download the dependencies' wheels")
    parser.add_argument("--extras", default="", help="comma-separated extras whose dependencies --deps includes")
    parser.add_argument("--claimed-platform", action="store_true",
                        help=f"with --deps: the dependencies' published wheels for {CLAIMED} (Debian 12), "
                             "not the controller's")
    args = parser.parse_args()
    src = os.path.abspath(args.src)
    if not os.path.isfile(os.path.join(src, "pyproject.toml")):
        raise SystemExit(f"{src}: not a hosttune source tree (no pyproject.toml); set hosttune_agent_src")
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH, PYTHONDONTWRITEBYTECODE="1")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.endswith(".whl"):
            os.unlink(os.path.join(out, name))
    with tempfile.TemporaryDirectory(prefix="hosttune-build-") as tmp:
        tree = os.path.join(tmp, "src")
        shutil.copytree(src, tree, symlinks=True, ignore=IGNORE)
        pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", out, tree], env)
        built = [n for n in os.listdir(out) if n.startswith("hosttune-") and n.endswith(".whl")]
        if len(built) != 1:
            raise SystemExit(f"expected one hosttune wheel in {out}, found {built}")
        wheel = built[0]
        if args.deps:
            spec = os.path.join(out, wheel) + (f"[{args.extras}]" if args.extras else "")
            if args.claimed_platform:
                pip(["download", "--quiet", *CLAIMED_PIP, "--dest", out, spec], env)
            else:
                pip(["wheel", "--quiet", "--wheel-dir", out, spec], env)
    wheels = sorted(n for n in os.listdir(out) if n.endswith(".whl"))
    pack(out, wheels)
    manifest = {"hosttune_wheel": wheel, "sha256": sha256(os.path.join(out, wheel)), "wheels": wheels,
                "archive": ARCHIVE, "deps": args.deps,
                "extras": sorted(e for e in args.extras.split(",") if e) if args.deps else [],
                "platform": CLAIMED if args.deps and args.claimed_platform else "controller"}
    with open(os.path.join(out, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.write("\n")
    json.dump(manifest, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
