"""hosttune's policy check, on the controller: every mistake of hosttune_policy at once.

    check_policy.py --wheelhouse DIR | --src TREE  < policy.json

Runs hosttune.policy.validate, the code the hosts run and no copy of it: the hosttune wheel of the
collection's wheelhouse (DIR/wheelhouse.json names it inside DIR/wheelhouse.tar; a pure-Python wheel
is imported as a zip file), or a hosttune source tree. Needs only what Ansible needs (PyYAML).
Exit 0: the policy is right (nothing printed). Exit 2: one line per mistake,
`hosttune_policy.<field>: <what is wrong>`. Exit 3: this Python cannot run hosttune (one line why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile

VARIABLE = "hosttune_policy"
PYTHON_MIN = (3, 11)  # hosttune's requires-python


def hosttune_path(args: argparse.Namespace, tmp: str) -> str:
    """What goes on sys.path so that `import hosttune` is the collection's (or the tree's) hosttune."""
    if args.src:
        return os.path.abspath(args.src)
    with open(os.path.join(args.wheelhouse, "wheelhouse.json")) as handle:
        manifest = json.load(handle)
    wheel = os.path.join(tmp, os.path.basename(manifest["hosttune_wheel"]))
    with tarfile.open(os.path.join(args.wheelhouse, manifest["archive"])) as tar:
        member = tar.extractfile(manifest["hosttune_wheel"])
        if member is None:
            raise SystemExit(f"{args.wheelhouse}: no {manifest['hosttune_wheel']} in {manifest['archive']}")
        with open(wheel, "wb") as out:
            out.write(member.read())
    return wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--wheelhouse", help="the collection's roles/hosttune_agent/files/wheelhouse")
    where.add_argument("--src", help="a hosttune source tree")
    args = parser.parse_args()
    if sys.version_info < PYTHON_MIN:
        print(f"The controller's Python {sys.version.split()[0]} cannot run hosttune's policy check "
              f"(hosttune needs {'.'.join(map(str, PYTHON_MIN))}).")
        return 3
    raw = json.load(sys.stdin)
    with tempfile.TemporaryDirectory(prefix="hosttune-policy-check-") as tmp:
        sys.path.insert(0, hosttune_path(args, tmp))
        from hosttune import policy
        from hosttune.errors import PolicyError

        try:
            policy.validate(raw, source=VARIABLE)
        except PolicyError as exc:
            for error in getattr(exc, "errors", [exc]):
                print(f"{VARIABLE}.{error.where}: {error.message}" if error.where else f"{VARIABLE}: {error.message}")
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
