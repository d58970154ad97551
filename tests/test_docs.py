"""The reference docs pinned to the code: docs/ARCHITECTURE.md's JSON schemas list the keys the real
commands print, and its area lists are the registry's. A key added to a plan, or an area added to
the registry, fails here until the docs say so (as scripts/role-docs --check does for the roles)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from hosttune import areas
from tests.conftest import REPO, run_cli
from tests.treegen import Spec, write_tree

ARCHITECTURE = os.path.join(REPO, "docs", "ARCHITECTURE.md")

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([{}\[\],:])')


def schema_keys(block: str) -> dict[tuple[str, ...], set[str]]:
    """The keys of a pseudo-JSON schema block, by the path of keys above them (list levels do not
    count: an instance's keys are under ("instances",)). A key is a quoted name where an object
    expects one, with or without a value (`{"id", "cpus": [int]}`); `#` comments are dropped."""
    text = re.sub(r"#[^\n]*", "", block)
    # a frame: [kind "{" or "[", its name, expecting a key?, the last key seen]
    stack: list[list] = [["[", None, False, None]]
    keys: dict[tuple[str, ...], set[str]] = {}
    for match in _TOKEN.finditer(text):
        string, punct = match.groups()
        frame = stack[-1]
        path = tuple(f[1] for f in stack if f[1] is not None)
        if string is not None:
            if frame[0] == "{" and frame[2]:
                keys.setdefault(path, set()).add(string)
                frame[3] = string
        elif punct == ":":
            frame[2] = False
        elif punct == ",":
            if frame[0] == "{":
                frame[2], frame[3] = True, None
        elif punct in "{[":
            name = frame[3] if frame[0] == "{" and not frame[2] else None
            if frame[0] == "{":
                frame[3] = None
            stack.append([punct, name, punct == "{", None])
        else:
            assert len(stack) > 1 and stack[-1][0] == {"}": "{", "]": "["}[punct], f"unbalanced {punct!r}"
            stack.pop()
    assert len(stack) == 1, "unbalanced schema block"
    return keys


def doc_block(heading: str) -> dict[tuple[str, ...], set[str]]:
    """The keys of the first fenced block after `heading` in ARCHITECTURE.md."""
    text = open(ARCHITECTURE).read()
    assert heading in text, f"docs/ARCHITECTURE.md has no section {heading!r}"
    block = re.search(r"```\n(.*?)```", text[text.index(heading):], re.S)
    assert block, f"no fenced block after {heading!r}"
    return schema_keys(block.group(1))


def test_schema_parser_reads_keys_where_they_are():
    keys = schema_keys('{"a": 1, "b": [{"c", "d": "x"|"y"}], "e": {"f": {"g"}, "h": ["v1", "v2"]},  # "z": 1\n'
                       ' "i": {...}}')
    assert keys == {(): {"a", "b", "e", "i"}, ("b",): {"c", "d"}, ("e",): {"f", "h"}, ("e", "f"): {"g"}}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A synthetic host on which every area plans something (tuned running for `managers`)."""
    root = write_tree(str(tmp_path_factory.mktemp("docs") / "host"), Spec())
    for path in ("usr/sbin/tuned", "run/systemd/units/invocation:tuned.service"):
        os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
        open(os.path.join(root, path), "w").close()
    return root


@pytest.fixture(scope="module")
def plan(host):
    return json.loads(run_cli("plan", "--root", host, "--json", check=0).stdout)


def test_every_area_plans_on_the_host(plan):
    assert {name: s["status"] for name, s in plan["settings"].items()} == {name: "planned" for name in areas.NAMES}
    assert plan["instances"]


def test_plan_schema_lists_the_plan_keys(plan):
    keys = doc_block("## Plan JSON")
    assert keys[()] == set(plan)
    assert keys[("settings",)] == set(plan["settings"]) == set(areas.NAMES)
    for name, setting in plan["settings"].items():
        assert keys.get(("settings", name), set()) == set(setting) - {"status", "reason"}, name
    assert keys[("instances",)] == set(plan["instances"][0])
    assert keys[("nodes",)] == set(plan["nodes"][0])


def test_area_lists_are_the_registry():
    text = open(ARCHITECTURE).read()
    registry = re.search(r"REGISTRY = \(([^)]*)\)", text)
    assert registry, "docs/ARCHITECTURE.md lost its REGISTRY line"
    assert tuple(n.strip() for n in registry.group(1).split(",")) == areas.NAMES
    listed = re.search(r"AREAs: `([^`]*)`", text)
    assert listed, "docs/ARCHITECTURE.md lost its AREAs line"
    assert tuple(listed.group(1).split()) == areas.NAMES


def _rows(report: dict, key: str) -> set[str]:
    return set().union(*(set(row) for row in report[key])) if report[key] else set()


def test_verify_apply_restore_schemas_list_their_keys(host, tmp_path):
    root = str(tmp_path / "host")
    shutil.copytree(host, root, symlinks=True)
    before = json.loads(run_cli("verify", "--root", root, "--json", check=1).stdout)
    applied = json.loads(run_cli("apply", "--root", root, "--json", check=3).stdout)
    restored = json.loads(run_cli("restore", "--root", root, "--json", check=3).stdout)
    assert restored["reboot_required"] is True  # the GRUB drop-in it put back waits for a boot: exit 3

    verify_doc = doc_block("## Verify JSON")
    assert verify_doc[()] == set(before)
    assert verify_doc[("counts",)] == set(before["counts"])
    assert _rows(before, "settings") and _rows(before, "settings") <= verify_doc[("settings",)]

    apply_doc = doc_block("## Apply JSON")
    assert apply_doc[()] == set(applied)
    for key in ("changes", "unsupported", "commands"):
        assert _rows(applied, key) <= apply_doc[(key,)], key
    assert _rows(applied, "changes") == apply_doc[("changes",)]

    restore_doc = doc_block("## Restore JSON")
    assert restore_doc[()] == set(restored)
    assert restored["restored"] and _rows(restored, "commands") <= restore_doc[("commands",)]
