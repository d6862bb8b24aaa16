"""The package's layering: imports go one way (graph -> plan -> run -> record -> pictures).

Counted from the source, imports inside functions included, so a lazy import cannot hide a
cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import graphexec

ROOT = Path(graphexec.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """graphexec modules that ``path`` imports (anywhere in it, TYPE_CHECKING blocks aside)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}  # fmt: skip
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _import_graph() -> nx.DiGraph:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for p in paths:
        g.add_edges_from((_module_name(p), m) for m in _imports(p, modules))
    return g


def _without_packages(g: nx.DiGraph) -> nx.DiGraph:
    """A package ``__init__`` that re-exports its modules is not a layer of its own."""
    inits = [m for m in g if any(o.startswith(m + ".") for o in g)]
    out = g.copy()
    for m in inits:
        out.remove_edges_from([(m, t) for t in g.successors(m) if t.startswith(m + ".")])
    return out


def test_no_import_cycle_among_modules():
    g = _without_packages(_import_graph())
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


def test_the_planner_is_pure():
    g = _import_graph()
    reached = nx.descendants(g, "graphexec.planner")
    forbidden = ("graphexec.executors", "graphexec.backends", "graphexec.viz", "graphexec.cli",
                 "graphexec.module", "graphexec.tune", "graphexec.interpret")  # fmt: skip
    bad = sorted(m for m in reached if m.startswith(forbidden))
    assert not bad, f"the planner reaches {bad}"


def test_plain_data_does_not_import_pictures():
    g = _import_graph()
    for data in ("graphexec.plans", "graphexec.profile"):
        assert not any(m.startswith("graphexec.viz") for m in nx.descendants(g, data)), data
