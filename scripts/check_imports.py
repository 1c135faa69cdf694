"""The import graph of ``src/pimpic``: no cycles, and imports only go down the layers.

Reads every module with :mod:`ast` (nothing is imported or run) and records each ``import
pimpic...`` / ``from pimpic... import ...``, wherever it stands — at the top of a module or
inside a function — except under ``if TYPE_CHECKING:`` (annotations only, never executed).

One import no statement shows: the registry imports every method module by name when it first
looks a method up. So no module the method modules load (transitively) may use the registry
itself — discovery would come back to it, a cycle through that hidden import (as when the
config schema, which looks the methods up, was imported by the methods).

Usage::

    python scripts/check_imports.py            # report; exit 1 on a cycle or an upward import
    python scripts/check_imports.py --graph    # also print every module's first-party imports

The layers, bottom first (a module may import its own layer and the layers below it):
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "pimpic"
#: the flow of the package, bottom first; a module's layer is the longest matching prefix
LAYERS: tuple[tuple[str, ...], ...] = (
    ("pimpic", "pimpic.errors", "pimpic.paths", "pimpic.io", "pimpic.envinfo", "pimpic.energy",
     "pimpic.patch"),
    ("pimpic.registry",),
    ("pimpic.config",),
    ("pimpic.models", "pimpic.training"),
    ("pimpic.data",),
    ("pimpic.nnunet",),
    ("pimpic.pretraining",),
    ("pimpic.segmentation",),
    ("pimpic.protocol",),
    ("pimpic.benchmarks",),
    ("pimpic.cli", "pimpic.__main__"),
)

#: the registry, and the package whose modules it imports by name (``registry.discover``)
REGISTRY = "pimpic.registry"
DISCOVERED = "pimpic.pretraining.methods"

__doc__ = (__doc__ or "") + "\n".join(
    f"    {i}. {', '.join(names)}" for i, names in enumerate(LAYERS)) + "\n"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def first_party_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The pimpic modules ``name`` (at ``path``) imports; ``from pkg import sub`` counts as
    importing ``pkg.sub`` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        out.update(t for t in targets if t == PACKAGE or t.startswith(f"{PACKAGE}."))
    out.discard(name)
    return out


def graph(src: Path) -> dict[str, set[str]]:
    """Module → the first-party modules it imports (resolved to existing modules)."""
    files = {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}
    modules = set(files)
    g: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for target in first_party_imports(path, name, modules):
            while target not in modules and "." in target:  # an attribute of a module
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                deps.add(target)
        g[name] = deps
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> int:
    best, level = -1, -1
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(f"{prefix}.")) and len(prefix) > best:
                best, level = len(prefix), i
    if level < 0:
        raise SystemExit(f"{module}: in no layer of scripts/check_imports.py; add it to LAYERS")
    return level


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a module from a higher layer (the package ``__init__`` excepted: it only
    states the version)."""
    return sorted((a, b) for a, deps in g.items() for b in deps
                  if b != PACKAGE and layer(b) > layer(a))


def reentries(g: dict[str, set[str]]) -> list[str]:
    """Modules outside the methods package that its modules load, directly or not, and that
    import the registry: discovery loads them and they look the methods up again."""
    discovered = [m for m in g if m == DISCOVERED or m.startswith(f"{DISCOVERED}.")]
    seen, stack = set(discovered), list(discovered)
    while stack:
        for dep in g[stack.pop()] - seen:
            seen.add(dep)
            stack.append(dep)
    return sorted(m for m in seen - set(discovered) if REGISTRY in g[m])


def problems(src: Path) -> list[str]:
    g = graph(src)
    out = [f"cycle: {' ↔ '.join(c)}" for c in cycles(g)]
    out += [f"upward import: {a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
            for a, b in upward(g)]
    out += [f"discovery re-enters: {m} imports {REGISTRY} and is loaded by {DISCOVERED}"
            for m in reentries(g)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--graph", action="store_true", help="print every module's imports")
    args = parser.parse_args()
    g = graph(args.src)
    if args.graph:
        for name in sorted(g):
            print(f"{name} [{layer(name)}] -> {', '.join(sorted(g[name])) or '-'}")
    found = problems(args.src)
    for line in found:
        print(line)
    n_edges = sum(len(v) for v in g.values())
    print(f"{len(g)} modules, {n_edges} first-party imports: "
          f"{'no cycle, no upward import' if not found else f'{len(found)} problem(s)'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
