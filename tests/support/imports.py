"""What a shoal module imports, read from its source with ``ast`` (nothing is
imported), for the tests that check the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

import shoal

SRC = Path(shoal.__file__).resolve().parent
"""The ``shoal`` package directory."""


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module name ``source`` (the text of ``module``) imports, fully qualified.

    ``from pkg import name`` yields both ``pkg`` and ``pkg.name`` (``name`` may be a
    submodule); relative imports are resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else "")
            first = node.args[0]
            if name in ("__import__", "import_module") and isinstance(first, ast.Constant) \
                    and isinstance(first.value, str):
                found.add(first.value)
    return found


def module_name(path: Path) -> tuple[str, bool]:
    """The dotted name of the module at ``path`` (under ``SRC``), and whether it is a
    package (an ``__init__.py``)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False
