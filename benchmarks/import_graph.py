"""The import graph between the project's packages, and the functions over a length limit.

    python benchmarks/import_graph.py [--longest 10]

Prints each package's imports of the others (module by module), then the longest functions in
``trainers/``, ``study/``, ``analysis/`` and ``stores/``. The rules (``tests/test_layering.py``):
``trainers`` imports none of the others; ``stores`` only ``trainers``; ``study`` imports
``analysis`` only for the report it writes at the end (``analysis.report``); no import cycle
between any two modules, type-only imports included (``cycles``).
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "stores", "study", "analysis")


def imports(package: str) -> dict[str, set[str]]:
    """Our modules each module of ``package`` imports (at any depth: lazy imports count too)."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            out[module] |= {n for n in names if n.split(".")[0] in PACKAGES and n.split(".")[0] != package}
    return out


def module_graph() -> dict[str, set[str]]:
    """Each of our modules and the modules of ours it imports, at any depth (lazy and type-only
    imports count: ``from trainers.loop import grpo`` is an edge to ``trainers.loop.grpo``)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
        graph[module] = edges - {module}
    return graph


def cycles() -> list[list[str]]:
    """The import cycles between our modules (strongly connected components of more than one
    module, Tarjan's algorithm), each sorted."""
    graph, index, low, stack, on_stack, found = module_graph(), {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def longest_functions(count: int) -> list[tuple[int, str]]:
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--longest", type=int, default=10)
    args = parser.parse_args()
    for package in PACKAGES:
        edges = {module: sorted(names) for module, names in imports(package).items() if names}
        targets = sorted({name.split(".")[0] for names in edges.values() for name in names})
        print(f"{package} -> {', '.join(targets) or 'nothing of ours'}")
        for module, names in edges.items():
            print(f"    {module}: {', '.join(names)}")
    print(f"\nImport cycles: {cycles() or 'none'}")
    print(f"\nThe {args.longest} longest functions (lines):")
    for lines, where in longest_functions(args.longest):
        print(f"  {lines:4d}  {where}")


if __name__ == "__main__":
    main()
