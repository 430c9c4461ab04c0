"""The layers hold: convcore <- worker <- app (import-linter contract in pyproject.toml), and no
module of the three packages takes part in an import cycle, counting imports inside functions
(grimp, import-linter's graph builder, reads every import statement)."""
from __future__ import annotations

from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("convcore", "worker", "app")


def test_layers_contract(capsys):
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself): Tarjan."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):  # iterative depth-first search: deep import chains must not hit the recursion limit
        work = [(v, iter(edges[v]))]
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child), on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = _cycles(graph)
    detail = []
    for component in cycles:
        for m in component:
            for other in component:
                if other != m and graph.direct_import_exists(importer=m, imported=other):
                    lines = [d["line_number"] for d in graph.get_import_details(importer=m, imported=other)]
                    detail.append(f"  {m} -> {other} (line {', '.join(map(str, lines))})")
    assert not cycles, "import cycles:\n" + "\n".join(detail)
