"""The CLI's modules import one way: the entry point (`cli/main.py`) imports the subcommand modules,
and they share `cli/common.py`, never `cli.main`. Read from the source, so an import inside a
function (the CLI imports its work lazily) counts as much as one at the top of a file."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.fixtures import ROOT

CLI = ROOT / "src" / "shipyard" / "cli"


def _imports(path: Path, package: str) -> set[str]:
    """Every `shipyard.*` module that `path` imports anywhere in its body, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            found.add(base)
            # `from shipyard.cli import views` imports the module shipyard.cli.views
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("shipyard")}


def cli_graph() -> dict[str, set[str]]:
    """Module -> the other shipyard.cli modules it imports."""
    modules = {f"shipyard.cli.{p.stem}": p for p in CLI.glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in _imports(path, "shipyard.cli") if m in modules and m != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as the path that closes it (depth-first search)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append([*path[path.index(node):], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for start in sorted(graph):
        visit(start, [])
    return found


def test_the_graph_sees_lazy_imports() -> None:
    # Without this, an empty answer below could mean the reader is blind to imports in functions.
    graph = cli_graph()
    assert "shipyard.cli.common" in graph["shipyard.cli.infer"]  # imported inside infer_cmd
    assert "shipyard.cli.views" in graph["shipyard.cli.main"]  # `from shipyard.cli import views`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_cli_module_imports_the_entry_point() -> None:
    importers = sorted(m for m, deps in cli_graph().items() if "shipyard.cli.main" in deps)
    assert importers == []


def test_no_import_circle_in_the_cli() -> None:
    assert cycles(cli_graph()) == []
