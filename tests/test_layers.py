"""The layout stays true: no import circle among batchrun's modules, and a top level one can read.

The layers themselves are `lint-imports`' contract (pyproject.toml `[tool.importlinter]`, run by
`make test`); what a layers contract cannot see is a circle inside one layer, or one dodged with an
import inside a function. grimp (import-linter's own graph) reads every import statement of every
module, inside functions and under `TYPE_CHECKING` too, so any circle shows here.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchrun"
# What a newcomer sees at the top of batchrun/ (issue 24: "at most about 12 modules", where the
# old tree had 40 .py files beside 4 packages). Now: 3 files (cli, api, errors) and 10 packages,
# each a stage of the data flow, 13 entries in all.
MOST_AT_THE_TOP = 13


def test_no_import_circle_at_all() -> None:
    graph = grimp.build_graph("batchrun", include_external_packages=False, cache_dir=None)
    circles = [sorted(group) for group in _strongly_connected(graph) if len(group) > 1]
    assert circles == [], "import circles:\n" + "\n".join(_explain(graph, c) for c in circles)


def test_the_circle_check_sees_a_circle_dodged_inside_a_function(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is not blind: a package whose circle is closed by an import inside a
    function (the usual dodge) is found, and with `TYPE_CHECKING` imports too."""
    package = tmp_path / "circled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("from circled.bottom import leaf\n")
    (package / "bottom.py").write_text("def leaf():\n    from circled.top import leaf as up\n")
    (package / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from circled.user import Thing\n")
    (package / "user.py").write_text("import circled.typed\nThing = int\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circled", cache_dir=None)
    circles = sorted(sorted(g) for g in _strongly_connected(graph) if len(g) > 1)
    assert circles == [["circled.bottom", "circled.top"], ["circled.typed", "circled.user"]]


def test_at_most_about_twelve_modules_at_the_top_of_the_package() -> None:
    # A module is a .py file or a package (a folder with an __init__.py); __init__ and __main__
    # are the package itself, not modules in it, and __pycache__ and the like are not code.
    top = sorted(
        path.stem for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem not in ("__init__", "__main__"))
        or (path.is_dir() and (path / "__init__.py").exists())
    )
    assert len(top) <= MOST_AT_THE_TOP, f"{len(top)} modules at the top of batchrun/: {top}"


def _strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's strongly connected components of the import graph, iteratively (no recursion
    limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[set[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, imported = work[-1]
            step = next(imported, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.find_modules_directly_imported_by(step)))))
                elif step in on_stack:
                    low[module] = min(low[module], index[step])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                group: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == module:
                        break
                groups.append(group)
    return groups


def _explain(graph: grimp.ImportGraph, circle: list[str]) -> str:
    """One circle and the import lines that close it (`importer:line: statement`)."""
    members = set(circle)
    lines = [f"  {' <-> '.join(circle)}"]
    for importer in circle:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"    {importer}:{detail['line_number']}: {detail['line_contents']}")
    return "\n".join(lines)
