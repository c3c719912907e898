"""The house rules a maintainer relies on: notebooks numbered in dependency order and named like their modules,
no long module without a reason stated at its top."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from conftest import PROJECT_DIR

NOTEBOOKS = sorted((PROJECT_DIR / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LONG = 330  # "about 300 lines"
STATED_REASON = re.compile(r"on purpose", re.IGNORECASE)


def default_exp(nb: Path) -> str | None:
    for cell in json.loads(nb.read_text())["cells"]:
        found = re.search(r"^#\|\s*default_exp\s+(\S+)", "".join(cell["source"]), re.MULTILINE)
        if cell["cell_type"] == "code" and found:
            return found.group(1)
    return None


def exported_imports(nb: Path) -> set[str]:
    "The nbs_lib modules a notebook's export cells import (what its module depends on)."
    found = set()
    for cell in json.loads(nb.read_text())["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and re.match(r"#\|\s*export", src):
            found |= set(re.findall(r"(?:from|import)\s+(?:nbs_lib)?\.(\w+)", src))
    return found


def test_notebooks_have_unique_numbers_and_are_named_like_their_modules():
    numbers = [nb.name[:2] for nb in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), numbers
    for nb in NOTEBOOKS:
        assert nb.stem[3:] == default_exp(nb), f"{nb.name} exports nbs_lib.{default_exp(nb)}"


def test_notebooks_are_numbered_in_dependency_order():
    number = {default_exp(nb): nb.name[:2] for nb in NOTEBOOKS}
    for nb in NOTEBOOKS:
        later = {m for m in exported_imports(nb) if m in number and number[m] >= nb.name[:2]}
        assert not later, f"{nb.name} imports {sorted(later)}, which come at or after it"


def test_no_long_module_without_a_stated_reason():
    modules = [*(PROJECT_DIR / "nbs_lib").glob("*.py"), *(PROJECT_DIR / "src").rglob("*.py"),
               *(PROJECT_DIR / "docker").glob("*.py")]
    long = {}
    for path in modules:
        lines = path.read_text().count("\n")
        if path.name != "_modidx.py" and lines > LONG:  # _modidx.py: nbdev's generated index
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            if not STATED_REASON.search(docstring):
                long[str(path.relative_to(PROJECT_DIR))] = lines
    assert not long, f"over {LONG} lines with no reason ('... on purpose: why') at the top: {long}"
