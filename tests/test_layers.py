"""Imports in hosttune/ only go down the layers, and the import graph has no cycle.

Every import is read with ast, at module level and inside functions (a function-level import is
still a dependency, only a later one). A failure names the file, line and both layers.
"""

from __future__ import annotations

import ast
import os

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "hosttune")

# Bottom to top. A module may import its own layer's modules or any lower layer's. Entries are
# module names; "x.*" is the package x and everything under it (the most specific entry wins).
# Layers with `peers` hold independent parts: none of them imports another.
LAYERS: list[tuple[str, list[str], bool]] = [
    ("base", ["hosttune", "hosttune.errors", "hosttune.cpulist", "hosttune.safeyaml", "hosttune.sysfs",
              "hosttune.runner", "hosttune.topology", "hosttune.instance_settings", "hosttune.hwclass",
              "hosttune.model", "hosttune.model.types",  # NAME_RE and the datatype table: light
              "hosttune.exposition", "hosttune.sdnotify", "hosttune.safejson", "hosttune.numbers",
              "hosttune.extras", "hosttune.threads", "hosttune.webconfig"], False),
    ("areas", ["hosttune.areas.*"], False),
    ("core", ["hosttune.discovery", "hosttune.policy", "hosttune.plan", "hosttune.engine", "hosttune.state"], False),
    ("model", ["hosttune.model.*"], False),
    ("shared command line", ["hosttune.cliutil"], False),
    ("serve", ["hosttune.serve.*"], False),
    ("parts", ["hosttune.bench.*", "hosttune.agent.*", "hosttune.fleet.*", "hosttune.converge"], True),
    ("tune", ["hosttune.tune.*"], False),  # bench's client and statistics in a search
    ("commands", ["hosttune.commands.*", "hosttune.agent.cli", "hosttune.serve.cli", "hosttune.bench.cli",
                  "hosttune.fleet.cli", "hosttune.tune.cli"], False),
    ("cli", ["hosttune.cli", "hosttune.__main__"], False),
]


def modules() -> dict[str, str]:
    """module name -> file, for every module of hosttune/."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                out[".".join(parts)] = path
    return out


def imports(module: str, path: str, known: dict[str, str]) -> list[tuple[str, int]]:
    """(imported hosttune module, line) for every import in the file, however deep."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import mod` imports pkg.mod
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in known else target, node.lineno))
    return [(name, line) for name, line in out if name == "hosttune" or name.startswith("hosttune.")]


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the entry that placed it)."""
    best = None
    for index, (_, entries, _) in enumerate(LAYERS):
        for entry in entries:
            if entry == module:
                return index, entry
            if entry.endswith(".*") and (module == entry[:-2] or module.startswith(entry[:-1])):
                if best is None or len(entry) > len(best[1]):
                    best = (index, entry)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return best


def graph() -> dict[str, list[tuple[str, int]]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in sorted(known.items())}


def upward_imports(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    known = modules()
    bad = []
    for module, targets in edges.items():
        mine, my_entry = layer_of(module)
        for target, line in targets:
            theirs, their_entry = layer_of(target)
            peers = LAYERS[mine][2] and mine == theirs and my_entry != their_entry
            if theirs > mine or peers:
                where = os.path.relpath(known[module], REPO)
                why = "a peer in" if peers else "up to"
                bad.append(f"{where}:{line}: {module} ({LAYERS[mine][0]}) imports {target}: {why} "
                           f"layer {LAYERS[theirs][0]}")
    return bad


def find_cycle(edges: dict[str, list[tuple[str, int]]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target, _ in edges.get(node, []):
            if target == node:
                continue  # `from hosttune.areas import base` inside hosttune.areas is not a cycle
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_imports_only_go_down():
    bad = upward_imports(graph())
    assert not bad, "imports that go up the layers:\n" + "\n".join(bad)


def test_no_import_cycle():
    edges = graph()
    cycle = find_cycle(edges)
    if cycle:
        lines = [f"{a} -> {b} (line {next(line for t, line in edges[a] if t == b)})"
                 for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle:\n" + "\n".join(lines))


def test_only_the_cli_imports_the_commands():
    users = sorted(f"{m} imports {t} (line {line})" for m, targets in graph().items() for t, line in targets
                   if t.startswith("hosttune.commands") and not m.startswith("hosttune.commands")
                   and m != "hosttune.cli")
    assert not users, "\n".join(users)


def test_the_checks_catch_what_they_look_for():
    """The checks themselves: an upward import, a peer import and a cycle are each reported by name."""
    edges = {"hosttune.plan": [("hosttune.serve.ovms_config", 14)], "hosttune.serve.ovms_config": [],
             "hosttune.agent.daemon": [("hosttune.fleet.ops", 3)], "hosttune.fleet.ops": []}
    bad = upward_imports(edges)
    assert any("hosttune/plan.py:14: hosttune.plan (core) imports hosttune.serve.ovms_config: up to layer serve"
               in b for b in bad), bad
    assert any("hosttune.agent.daemon (parts) imports hosttune.fleet.ops: a peer in layer parts" in b
               for b in bad), bad
    cycle = find_cycle({"hosttune.agent.cli": [("hosttune.agent.daemon", 1)],
                        "hosttune.agent.daemon": [("hosttune.agent.cli", 42)]})
    assert cycle == ["hosttune.agent.cli", "hosttune.agent.daemon", "hosttune.agent.cli"]
    assert find_cycle({"a": [("b", 1)], "b": []}) is None


def test_relative_and_from_imports_are_resolved(tmp_path):
    """`from hosttune import sysfs` is an import of hosttune.sysfs; `from . import x` is resolved."""
    src = tmp_path / "m.py"
    src.write_text("from hosttune import sysfs, __version__\nfrom . import plan\n"
                   "def f():\n    import hosttune.engine\n")
    known = {**modules(), "hosttune.m": str(src)}
    got = imports("hosttune.m", str(src), known)
    assert got == [("hosttune.sysfs", 1), ("hosttune", 1), ("hosttune.plan", 2), ("hosttune.engine", 4)]


def test_building_the_command_line_loads_no_heavy_library():
    """`hosttune plan` starts fast: the command modules import openvino, numpy, ansible, fabric,
    uvicorn and the like inside their handlers only."""
    import subprocess
    import sys

    heavy = ("openvino", "numpy", "nncf", "ansible", "ansible_runner", "fabric", "paramiko", "uvicorn",
             "httptools", "orjson", "simdjson", "psutil")
    code = ("import sys; from hosttune import cli; cli.build_parser(['plan']); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
