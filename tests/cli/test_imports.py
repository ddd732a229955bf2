"""The CLI's modules import one way: the entry point (`cli/main.py`) imports the subcommand modules,
and they share `cli/common.py`, never `cli.main`. The import graph is the one tests/test_architecture.py
reads from the source, so an import inside a function (the CLI imports its work lazily) counts as much
as one at the top of a file; that test also finds any import circle, in the CLI or elsewhere."""

from __future__ import annotations

from tests.test_architecture import GRAPH


def test_the_graph_sees_lazy_imports() -> None:
    # Without this, an empty answer below could mean the reader is blind to imports in functions.
    assert "shipyard.cli.common" in GRAPH["shipyard.cli.infer"]  # imported inside infer_cmd
    assert "shipyard.cli.views" in GRAPH["shipyard.cli.main"]  # `from shipyard.cli import views`


def test_no_cli_module_imports_the_entry_point() -> None:
    assert sorted(m for m, deps in GRAPH.items() if "shipyard.cli.main" in deps) == []
