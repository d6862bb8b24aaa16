"""The package's layering: imports go one way (graph -> plan -> run -> record -> pictures).

Counted from the source, imports inside functions and ``if TYPE_CHECKING:`` blocks included,
so neither a lazy import nor a type hint can hide a cycle. Modules stay small (500 lines at
most) and keep their private names to themselves.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import networkx as nx

import graphexec

ROOT = Path(graphexec.__file__).parent

#: The most lines a module may have (STYLE.md: "modules of a few hundred lines").
MAX_LINES = 500

#: Modules allowed over `MAX_LINES`, each with the reason. An entry that is no longer needed
#: fails the test, so it is removed when the module is split.
LONG_MODULES: dict[str, str] = {}

#: Private names one module may take from another, each with the reason (none needed).
PRIVATE_IMPORTS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imported(path: Path, name: str) -> Iterator[tuple[str, list[str], ast.AST]]:
    """``(module, names, node)`` for every import in ``path``, the module ``name`` (anywhere
    in it, functions and TYPE_CHECKING blocks included), relative imports resolved; ``names``
    are those taken from the module by ``from ... import``, empty for a plain ``import``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [a.name for a in node.names], node


def _imports(path: Path, modules: set[str]) -> set[str]:
    """graphexec modules that ``path`` imports (``from . import trials``: the module
    ``trials``; ``from .plans import Plan``: ``plans``)."""
    name = _module_name(path)
    found: set[str] = set()
    for base, names, _ in _imported(path, name):
        targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
        if len(targets) < len(names) or not names:  # a name of the module itself
            targets.append(base)
        found |= {t for t in targets if t in modules and t != name}
    return found


def _import_graph() -> nx.DiGraph:
    paths = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(paths)
    for name, p in paths.items():
        g.add_edges_from((name, m) for m in _imports(p, set(paths)))
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


def test_type_checking_imports_are_counted(tmp_path):
    """A cycle through a type hint is a cycle: the layering sees ``if TYPE_CHECKING:``."""
    module = tmp_path / "hinted.py"
    module.write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                      "    from .plans import Plan\n")  # fmt: skip
    found = [(base, names) for base, names, _ in _imported(module, "graphexec.hinted")]
    assert ("graphexec.plans", ["Plan"]) in found


def test_the_planner_is_pure():
    g = _import_graph()
    reached = nx.descendants(g, "graphexec.planner")
    forbidden = ("graphexec.executors", "graphexec.backends", "graphexec.viz", "graphexec.cli",
                 "graphexec.module", "graphexec.tune", "graphexec.interpret")  # fmt: skip
    bad = sorted(m for m in reached  # graphexec.module and its children, not module_call
                 if any(m == f or m.startswith(f + ".") for f in forbidden))  # fmt: skip
    assert not bad, f"the planner reaches {bad}"


def test_plain_data_does_not_import_pictures():
    g = _import_graph()
    for data in ("graphexec.plans", "graphexec.profile"):
        assert not any(m.startswith("graphexec.viz") for m in nx.descendants(g, data)), data


def test_the_package_face_is_imported_by_nothing_below_it():
    """``graphexec/__init__.py`` imports everything; a module that imports it back (for
    ``__version__``, say) points up. The version lives at the bottom, in ``_version``."""
    g = _import_graph()
    assert not sorted(g.predecessors("graphexec"))


def test_no_module_is_over_500_lines():
    sizes = {name: len(p.read_text().splitlines()) for name, p in _modules().items()}
    long = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in LONG_MODULES}
    assert not long, f"modules over {MAX_LINES} lines (split them along a seam): {long}"
    stale = sorted(name for name in LONG_MODULES if sizes.get(name, 0) <= MAX_LINES)
    assert not stale, f"no longer over {MAX_LINES} lines: remove {stale} from LONG_MODULES"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_home(module: str) -> str | None:
    """The package a module is private to (``graphexec.viz`` for ``graphexec.viz._style``),
    or None for a public module."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            return ".".join(parts[:i])
    return None


def _private_imports() -> list[tuple[str, str, int]]:
    """``(importer, what, line)`` for each private name a graphexec module takes from another:
    an underscore name of another module (by import, or as an attribute of a module it
    imported), or a private module from outside the package it belongs to."""
    modules = _modules()
    found = []
    for name, path in modules.items():
        bound: dict[str, str] = {}  # local name -> the graphexec module it is
        for base, names, node in _imported(path, name):
            if not base.startswith("graphexec"):
                continue
            targets = [base] if not names else [f"{base}.{n}" for n in names]
            for target in targets:
                owner, _, leaf = target.rpartition(".")
                module = target if target in modules else owner
                home = _private_home(module)
                if home is not None and not (name + ".").startswith(home + "."):
                    found.append((name, module, node.lineno))
                if target not in modules and names and _private(leaf):
                    found.append((name, target, node.lineno))
            if isinstance(node, ast.ImportFrom):
                bound.update({a.asname or a.name: f"{base}.{a.name}" for a in node.names
                              if f"{base}.{a.name}" in modules})  # fmt: skip
            else:
                bound.update({a.asname or a.name: a.name for a in node.names
                              if a.asname and a.name in modules})  # fmt: skip
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and _private(node.attr)):  # fmt: skip
                found.append((name, f"{bound[node.value.id]}.{node.attr}", node.lineno))
    return found


def test_no_module_imports_a_private_name_of_another():
    """Inside a subpackage, names its modules share are public within it (no underscore);
    outside, nothing takes another module's private names."""
    found = _private_imports()
    bad = [f"{m}:{line} takes {what}" for m, what, line in found
           if (m, what) not in PRIVATE_IMPORTS]  # fmt: skip
    assert not bad, "private names taken across modules:\n" + "\n".join(bad)
    stale = sorted(set(PRIVATE_IMPORTS) - {(m, what) for m, what, _ in found})
    assert not stale, f"no longer taken: remove {stale} from PRIVATE_IMPORTS"


def test_the_private_name_check_finds_what_it_should():
    """The checks of the test above, on the package's own names: a private module used
    inside its package passes, an underscore name would not."""
    assert _private_home("graphexec.viz._style") == "graphexec.viz"
    assert _private_home("graphexec._version") == "graphexec"
    assert _private_home("graphexec.executors.dask.jobs") is None
    assert _private("_run_job") and not _private("__version__") and not _private("run_job")


def _module_map() -> str:
    """The module map of docs/concepts.md (its ``text`` block under "How the package is
    layered")."""
    page = (ROOT.parent / "docs" / "concepts.md").read_text()
    section = page.split("## How the package is layered", 1)[1]
    return section.split("```text\n", 1)[1].split("```", 1)[0]


def test_the_module_map_names_every_module():
    """docs/concepts.md's map names every module of the package and of executors/, and each
    subpackage below them (``cuda/``), by its file name or, within a list, its stem; a module
    added without a place on the map fails here."""
    words = {w.removesuffix(".py") for w in re.findall(r"[A-Za-z_][A-Za-z_0-9.]*", _module_map())}
    missing = []
    for name in _modules():
        parts = name.split(".")[1:]
        if not parts or parts[-1] in ("__main__", "_version"):
            continue
        if parts[0] in ("viz",) or (parts[0] == "executors" and len(parts) > 2):
            wanted = parts[1] if parts[0] == "executors" else "viz"  # a subpackage: its name
        else:
            wanted = parts[-1]
        if wanted.lstrip("_") not in words:
            missing.append(name)
    assert not missing, f"not on the module map of docs/concepts.md: {missing}"
