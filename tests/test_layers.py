"""What import-linter does not check: no module uses another gradproj module's private name.

The layers and the absence of import cycles are import-linter contracts (pyproject.toml,
``lint-imports``, run by ``make test``). This test parses every ``gradproj/**/*.py`` and
``benchmarks/**/*.py`` with ``ast`` (nothing is imported) and refuses ``from gradproj.M import _x``
and ``M._x`` where ``M`` was imported from gradproj (dunders such as ``__version__`` are public).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path, own: str | None = None) -> list[str]:
    """``file:line: what`` for each private name of another gradproj module used in ``path``
    (``own``: the file's own dotted module name, whose private names it may use)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    aliases: dict[str, str] = {}         # local name → gradproj module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradproj"):
            for alias in node.names:
                if is_private(alias.name) and node.module != own:
                    found.append(f"{path.name}:{node.lineno}: imports {node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gradproj"):
                    aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            base = node.value
            parts = []
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                module = ".".join([aliases[base.id], *reversed(parts)])
                if module != own:
                    found.append(f"{path.name}:{node.lineno}: uses {module}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module_boundary():
    found = []
    for path in sorted((ROOT / "gradproj").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        own = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found += private_uses(path, own)
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        found += private_uses(path)
    assert not found, "\n".join(found)


def test_the_checker_finds_each_kind_of_use(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from gradproj.core.tokens import _ids, collate\n"
                   "import gradproj.core.data as data\n"
                   "from gradproj.core import model\n"
                   "data._read_jsonl\nmodel._source\ncollate.__doc__\n")
    assert private_uses(bad) == [
        "bad.py:1: imports gradproj.core.tokens._ids",
        "bad.py:4: uses gradproj.core.data._read_jsonl",
        "bad.py:5: uses gradproj.core.model._source"]
    assert private_uses(bad, own="gradproj.core.tokens") == [
        "bad.py:4: uses gradproj.core.data._read_jsonl",
        "bad.py:5: uses gradproj.core.model._source"]
