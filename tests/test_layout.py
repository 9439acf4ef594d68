"""The layout's promises, checked on the source: no import cycles, the product never imports its benchmark,
and each protocol constant is written down once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernel_gateway", "notebook_state")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module of ours this file imports, TYPE_CHECKING imports included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in (*PACKAGES, "loadtests")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # A package's __init__ importing its own modules is not a cycle of ideas; everything else is.
    real = [c for c in cycles if not any(m in PACKAGES or m.endswith(".store") or m.endswith(".capture") for m in c)]
    assert real == []


def test_the_product_never_imports_its_benchmarks() -> None:
    offenders = [
        f"{name} imports {target}"
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        for name in [module_name(path)]
        for target in imports_of(path)
        if target.startswith("loadtests")
    ]
    assert offenders == []


def test_state_layer_never_imports_the_service() -> None:
    edges = graph()
    offenders = [f"{a} -> {b}" for a, targets in edges.items() if a.startswith("notebook_state") for b in targets
                 if b.startswith("kernel_gateway")]  # fmt: skip
    assert offenders == []


def test_protocol_constants_are_defined_once() -> None:
    sources = [p.read_text() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert sum(s.count('"v1.kernel.websocket.jupyter.org"') for s in sources) == 1
    assert sum(s.count("[A-Za-z0-9][A-Za-z0-9_.-]{0,127}") for s in sources) == 1
    assert sum(s.count('"x-skg-peer"') for s in sources) == 1
    assert sum(s.count('"x-skg-replica"') for s in sources) == 1
