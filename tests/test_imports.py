"""The package's import graph: no cycles, and the layers point one way.

grimp (the graph library under import-linter) reads every `import` in `nexus`, those inside functions
and under `if TYPE_CHECKING:` included: a cycle hidden in a function or a type hint is still two
modules that cannot be understood, tested or moved one without the other.
"""

from __future__ import annotations

import grimp
import pytest

#: Packages that the request path's lower layers build on; none of them may reach up into the proxy.
BELOW_PROXY = ("nexus.storage", "nexus.conversations")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("nexus", include_external_packages=True, cache_dir=None)


def import_cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
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
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def nexus_modules(graph: grimp.ImportGraph) -> set[str]:
    return {m for m in graph.modules if m == "nexus" or m.startswith("nexus.")}


def test_the_graph_is_read(graph: grimp.ImportGraph) -> None:
    """A graph that missed the package would pass every check below."""
    modules = nexus_modules(graph)
    assert {"nexus.proxy.app", "nexus.storage.writer", "nexus.api.routes", "nexus.fake_upstream.server"} <= modules
    assert "nexus.storage.writer" in graph.find_modules_directly_imported_by("nexus.proxy.app")


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert import_cycles(graph, nexus_modules(graph)) == []


def test_the_cycle_finder_finds_cycles() -> None:
    g = grimp.ImportGraph()
    for importer, imported in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("f", "a")]:
        g.add_import(importer=importer, imported=imported)
    assert sorted(import_cycles(g, set(g.modules))) == [["a", "b", "c"], ["d", "e"]]


@pytest.mark.parametrize("package", BELOW_PROXY)
def test_lower_layers_do_not_import_the_proxy(graph: grimp.ImportGraph, package: str) -> None:
    chains = graph.find_shortest_chains(importer=package, imported="nexus.proxy", as_packages=True)
    assert chains == set(), f"{package} reaches nexus.proxy: {sorted(chains)}"


def test_the_package_never_imports_its_tests(graph: grimp.ImportGraph) -> None:
    assert "tests" not in graph.modules or not graph.find_modules_that_directly_import("tests")


def test_only_the_command_line_starts_the_fake_upstream(graph: grimp.ImportGraph) -> None:
    """The fake upstream ships as `nexus fake-upstream`; nothing on the gateway's own path uses it."""
    importers = {
        m
        for m in graph.find_downstream_modules("nexus.fake_upstream", as_package=True)
        if not m.startswith("nexus.fake_upstream")
    }
    assert importers == {"nexus.cli"}
