"""The API stands alone: importing it, building it and starting it pulls in no training or monitoring library
(Optuna, Great Expectations, Evidently, Plotly); and the packages import each other one way only."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, isolated_env

HEAVY = ["optuna", "great_expectations", "evidently", "plotly"]   # training and monitoring libraries, not serving's

# Imports the app, builds it with the environment's settings, starts it (lifespan: the champion loads) and asks
# /health and /ready; prints which HEAVY modules were imported after each step.
PROBE = f"""
import json, sys
HEAVY = {HEAVY!r}
def loaded(): return sorted(m for m in HEAVY if m in sys.modules)
seen = {{}}
import src.serving.app as served
seen["import"] = loaded()
app = served.create_app()
seen["create_app"] = loaded()
from fastapi.testclient import TestClient
with TestClient(app) as client:
    seen["status"] = [client.get("/health").status_code, client.get("/ready").status_code]
    seen["started"] = loaded()
print(json.dumps(seen))
"""


def probe(env: dict[str, str]) -> dict:
    """Run PROBE in a fresh interpreter with `env` on top of the current environment."""
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=PROJECT_DIR, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_api_imports_builds_and_starts_without_training_or_monitoring_libraries(tmp_path):
    seen = probe(isolated_env(tmp_path))   # an empty store: the API starts and answers 503 until a champion exists
    assert seen == {"import": [], "create_app": [], "status": [200, 503], "started": []}


def test_the_api_serving_a_champion_loads_no_training_or_monitoring_library(trained_project):
    seen = probe(trained_project)
    assert seen == {"import": [], "create_app": [], "status": [200, 200], "started": []}


# ------------------------------------------------------------------------- import direction between packages ---

def package_of(module: str) -> str | None:
    """The unit whose imports must go one way: src.serving, src.monitoring, src.bench, nbs_lib, or a top-level
    module of src (src.pipeline, ...); None outside the project."""
    parts = module.split(".")
    if parts[0] == "nbs_lib":
        return "nbs_lib"
    if parts[0] == "src" and len(parts) > 1:
        return ".".join(parts[:2])
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(PROJECT_DIR).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (a lazy import is a dependency too)."""
    name, is_package = module_name(path), path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolved against this module's package
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}   # `from src import pipeline` imports src.pipeline
    return found


def project_graph(unit=package_of) -> dict[str, set[str]]:
    """unit -> the other units it imports, over src/ and nbs_lib/ (tests and docker are leaves, not checked)."""
    graph: dict[str, set[str]] = {}
    files = [p for p in [*(PROJECT_DIR / "src").rglob("*.py"), *(PROJECT_DIR / "nbs_lib").glob("*.py")]
             if p.name != "_modidx.py"]
    for path in files:
        here = unit(module_name(path))
        if here is None:
            continue
        targets = {unit(m) for m in imported_modules(path)} - {None, here}
        graph.setdefault(here, set()).update(targets)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found by a depth-first search, as the path that closes it."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_packages_import_each_other_one_way():
    graph = project_graph()
    assert "src.monitoring" in graph["src.serving"]           # the app includes the monitoring router ...
    assert "src.serving" not in graph["src.monitoring"]       # ... which knows nothing of the app
    assert not any(m.startswith("src") for m in graph["nbs_lib"]), "the library must not import the applications"
    assert cycles(graph) == []


def test_library_modules_import_each_other_one_way():
    graph = project_graph(lambda m: m if m.startswith("nbs_lib.") and m.count(".") == 1 else None)
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", ["nbs_lib.champion", "nbs_lib.serving", "nbs_lib.config"])
def test_modules_the_api_needs_import_no_heavy_library(module):
    code = f"import sys, {module}; print([m for m in {HEAVY + ['mlflow', 'sklearn']!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr[-2000:]
