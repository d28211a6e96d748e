"""The import graph between the project's packages, and the functions over a length limit.

    python benchmarks/import_graph.py [--longest 10]

Prints each package's imports of the others (module by module), then the longest functions in
``trainers/``, ``study/``, ``analysis/`` and ``stores/``. The rules (``tests/test_layering.py``):
``trainers`` imports none of the others; ``stores`` only ``trainers``; ``study`` imports
``analysis`` only for the report it writes at the end (``analysis.report``).
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
    print(f"\nThe {args.longest} longest functions (lines):")
    for lines, where in longest_functions(args.longest):
        print(f"  {lines:4d}  {where}")


if __name__ == "__main__":
    main()
