"""The import layers hold: every import (lazy ones inside functions included) points down, and
no two modules import each other, directly or through others.

Layers, lowest first (a module may import its own layer and those below):

    proto < common < server | client < semalign (library) < commands < deploy < entry | testing

server and client are side by side and never import each other. ``semalign.commands`` holds
the argparse modules; no library module imports them. deploy includes its subpackages (cli,
commands, options, serving, flower). The entry layer is the console script (``semalign.cli``)
and ``python -m semalign``; beside it, the test hosts (``semalign_testing``, outside the wheel)
may use everything below, and nothing in the wheel imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: import package -> folder, as pyproject's package-dir maps them.
PACKAGES = {
    "semalign.proto": ROOT / "proto",
    "semalign.common": ROOT / "common",
    "semalign.server": ROOT / "server",
    "semalign.client": ROOT / "client",
    "semalign.deploy": ROOT / "deploy",
    "semalign_testing": ROOT / "semalign_testing",
    "semalign": ROOT / "semalign",
}
GENERATED = {"semalign.proto.semalign_pb2", "semalign.proto.semalign_pb2_grpc"}
ENTRY = {"semalign.cli", "semalign.__main__"}


def layer(module: str) -> tuple[int, str]:
    """(rank, name) of a module's layer; equal ranks with different names may not mix."""
    if module in ENTRY:
        return 7, "entry"
    for prefix, rank, name in (
        ("semalign.proto", 0, "proto"),
        ("semalign.common", 1, "common"),
        ("semalign.server", 2, "server"),
        ("semalign.client", 2, "client"),
        ("semalign.commands", 4, "commands"),
        ("semalign.deploy", 5, "deploy"),
        ("semalign_testing", 7, "testing"),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return rank, name
    return 3, "semalign"


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if (
                package == "semalign"
                and parts
                and parts[0] in {"proto", "common", "server", "client", "deploy"}
            ):
                continue
            found.setdefault(name, path)
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every semalign module ``path`` imports, resolved to a known module name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets.add(mod)
            targets.update(f"{mod}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        if not target.startswith("semalign"):
            continue
        # the longest known module that the target names (a module or a name inside one)
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and target != "semalign":
            resolved.add(target)
    return resolved


GRAPH = {
    name: imports_of(name, path, set(modules()))
    for name, path in modules().items()
    if name not in GENERATED
}


def test_the_walk_sees_the_whole_tree():
    assert {"semalign.server.session", "semalign.client.user", "semalign.cli"} <= set(GRAPH)
    assert {"semalign.deploy.commands.run", "semalign.deploy.flower.app.serverapp"} <= set(GRAPH)
    assert "semalign_testing.testbed" in GRAPH
    assert "semalign.common.errors" in GRAPH["semalign.server.access_point"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    rank, name = layer(module)
    bad = []
    for target in sorted(GRAPH[module]):
        t_rank, t_name = layer(target)
        if t_rank > rank or (t_rank == rank and t_name != name):
            bad.append(f"{target} ({t_name})")
    assert not bad, f"{module} ({name}) imports upward or sideways: {', '.join(bad)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circles():
    # package __init__ modules re-export their contents; an edge from a module to its own
    # package's __init__ is not a circle of logic
    graph = {
        mod: {t for t in targets if not mod.startswith(t + ".")} for mod, targets in GRAPH.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_checks_can_fail():
    """The checkers themselves catch what they are meant to catch."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("semalign.server.session") > layer("semalign.common.admm")
    assert layer("semalign.server.x")[1] != layer("semalign.client.x")[1]
    assert layer("semalign.engine.simulate") < layer("semalign.commands.simulate")
    assert layer("semalign.deploy.commands.run") < layer("semalign_testing.testbed")
    assert layer("semalign_testing.testbed")[1] != layer("semalign.cli")[1]  # side by side
