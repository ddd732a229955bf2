"""The arrows of docs/architecture.md, read from the source: every `import` statement of every module
(those inside functions too, which is where a lazy import would hide a circle), resolved to the
shipyard module it names. Static on purpose: it sees every module, not only those one run imports."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import ROOT

SRC = ROOT / "src"

# The layers, lowest first. A module may import its own layer or any below it, never one above.
# The serve core and its channels are separate layers: a channel calls the core, never the reverse,
# and `serve.app` (which mounts the channels) sits with them.
LAYERS: list[tuple[str, ...]] = [
    ("shipyard.errors",),
    ("shipyard.tensors", "shipyard.config", "shipyard.protocol", "shipyard.units", "shipyard.tasks"),
    ("shipyard.repository", "shipyard.kernels", "shipyard.quant"),
    ("shipyard.runtimes", "shipyard.generate"),
    ("shipyard.zoo", "shipyard.train", "shipyard.optimize"),
    ("shipyard.serve", "shipyard.client"),
    ("shipyard.serve.channels", "shipyard.serve.app"),
    ("shipyard.cli", "shipyard.__main__"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "shipyard").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module that `import name` runs last: `name` itself, or the nearest package above it."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _statements(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree except those under `if TYPE_CHECKING:` (names for type hints only,
    which never run, so they cannot close a circle)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for other in node.orelse:
                yield other
                yield from _statements(other)
            continue
        yield node
        yield from _statements(node)


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported shipyard module, line) for every import statement in `module` that can run."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _statements(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*head, base] if base else head)
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            owner = _owner(target) if target.startswith("shipyard") else None
            if owner and owner != module:
                yield owner, node.lineno


GRAPH = {m: sorted({t for t, _ in _imports(m)}) for m in MODULES}


def _layer(module: str) -> int:
    best, level = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:  # the longest prefix names the layer: serve.channels before serve
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    return level


def test_the_reader_sees_the_imports_it_must() -> None:
    # Without this, the empty lists below could mean a blind reader rather than a clean tree.
    assert "shipyard.serve.dataplane" in GRAPH["shipyard.serve.app"]
    assert "shipyard.errors" in GRAPH["shipyard.tensors"]
    assert all(_layer(m) >= 0 for m in MODULES if m != "shipyard"), [m for m in MODULES if _layer(m) < 0]


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{m} -> {t}" for m in MODULES if m != "shipyard" for t in GRAPH[m]
              if t != "shipyard" and _layer(t) > _layer(m)]
    assert upward == []


def test_nothing_outside_the_cli_imports_it() -> None:
    assert [f"{m} -> {t}" for m in MODULES if not m.startswith("shipyard.cli") for t in GRAPH[m]
            if t.startswith("shipyard.cli")] == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in MODULES:
        if root in index:
            continue
        work = [(root, iter(GRAPH[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(GRAPH[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("edges, expected", [
    ({"a": ["b"], "b": ["a"], "c": []}, [["a", "b"]]),
    ({"a": ["b"], "b": ["c"], "c": []}, []),
])
def test_the_circle_finder_finds_circles(edges: dict[str, list[str]], expected: list[list[str]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.MODULES", dict.fromkeys(edges, Path()))
    monkeypatch.setattr(f"{__name__}.GRAPH", edges)
    assert _cycles() == expected
