"""List functions in condastack/ longer than a limit (default 80 lines): `python scripts/long_functions.py [N]`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def long_functions(folder: Path, limit: int) -> list[tuple[int, str]]:
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append((n, f"{path.relative_to(folder)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


if __name__ == "__main__":
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    found = long_functions(Path(__file__).resolve().parent.parent / "condastack", limit)
    for n, where in found:
        print(f"{n:4d}  {where}")
    sys.exit(1 if found else 0)
