"""The code's layers, checked from its import graph (ast: imports at top level, inside functions and under
``TYPE_CHECKING`` alike): no import cycles in the client or the server, the transports import neither a store
nor a backend, the protocol core imports no client, server, HTTP library, event loop or driver.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGES = ("headwater.server", "headwater.client", "headwater.protocol")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in (SRC / "headwater").rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The headwater modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod`` when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imported(name, path, known)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]], within: str) -> list[list[str]]:
    """Every strongly connected group of more than one module under ``within`` (Tarjan), as sorted lists.
    A package's ``__init__`` importing its own modules is not a cycle unless a module imports it back."""
    nodes = [n for n in edges if n == within or n.startswith(within + ".")]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in nodes:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in nodes:
        if node not in index:
            visit(node)
    return groups


def without_package_reexports(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges from a package's ``__init__`` to its own submodules (re-exports): they make a cycle
    with every submodule that imports a sibling through the package, which is no layering problem."""
    return {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in edges.items()}


@pytest.mark.parametrize("package", ["headwater.server", "headwater.client", "headwater.protocol"])
def test_no_import_cycles(package: str) -> None:
    assert cycles(without_package_reexports(graph()), package) == []


def test_the_transports_import_neither_a_store_nor_a_backend() -> None:
    edges = graph()
    # The inspector (headwater.inspect) is a transport too: a page and its API over HTTP, mounted by app.py.
    transports = [n for n in edges if n.startswith(("headwater.server.http", "headwater.inspect"))]
    assert transports, "the transports live in headwater.server.http"
    for name in transports:
        bad = {t for t in edges[name] if t.startswith(("headwater.server.store", "headwater.server.backends",
                                                        "headwater.server.live"))}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_below_the_transports_nothing_imports_them() -> None:
    edges = graph()
    for name, targets in edges.items():
        if name.startswith(("headwater.server.http", "headwater.inspect")) or name in (
            "headwater.server.app", "headwater.server.cli"
        ):
            continue
        assert not {t for t in targets if t.startswith("headwater.server.http")}, name


def test_validation_and_errors_load_no_web_framework() -> None:
    for name in ("headwater.server.errors", "headwater.server.requests", "headwater.server.compaction"):
        tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in names if m.split(".")[0] in ("starlette", "uvicorn", "httpx", "aiohttp")}, name


def test_the_protocol_core_imports_no_io() -> None:
    for name, path in modules().items():
        if not name.startswith("headwater.protocol"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        roots = {m.split(".")[0] for m in names}
        assert not roots & {"asyncio", "httpx", "aiohttp", "starlette", "uvicorn", "sqlite3", "asyncpg", "redis"}, name
        assert not {m for m in names if m.startswith(("headwater.server", "headwater.client"))}, name


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert cycles(edges, "p") == [["p.a", "p.b", "p.c"]]
