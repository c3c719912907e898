"""Shared fixtures: a project whose pipeline has run once (smoke profile, generated data) in a temporary folder.

Everything a run writes (MLflow store, Optuna storage, data/raw, reports, prediction log) goes under that folder,
so tests never touch the developer's models/ or reports/.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"
REAL_TRAIN = SHARED_DATA / "obesity_train.csv"
REAL_CURRENT = SHARED_DATA / "obesity_uci.csv"


def isolated_env(root: Path) -> dict[str, str]:
    """Environment variables that point every store and output of the project under `root`."""
    return {
        "MODELS_DIR": str(root / "models"),
        "DATA_DIR": str(root / "data"),
        "REPORTS_DIR": str(root / "reports"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'models' / 'mlflow.db'}",
        "OPTUNA_STORAGE": f"sqlite:///{root / 'models' / 'optuna.db'}",
        "PREDICTION_LOG": str(root / "data" / "predictions" / "predictions.db"),
        "PROFILE": "smoke",
        "SPEC": "specs/obesity.yaml",
        "DATA": "",
    }


def run_pipeline(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m src.pipeline` in a subprocess with `env` on top of the current environment."""
    return subprocess.run([sys.executable, "-m", "src.pipeline", *args], cwd=PROJECT_DIR, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> dict[str, str]:
    """Run the whole pipeline once on generated data; returns the env that points at its stores."""
    root = tmp_path_factory.mktemp("project")
    env = isolated_env(root)
    proc = run_pipeline(env)
    assert proc.returncode == 0, f"pipeline failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return env


@pytest.fixture
def project_env(trained_project, monkeypatch) -> dict[str, str]:
    """The trained project's env applied to this test's process (for in-process MLflow / API tests)."""
    for k, v in trained_project.items():
        monkeypatch.setenv(k, v)
    import mlflow

    mlflow.set_tracking_uri(trained_project["MLFLOW_TRACKING_URI"])
    yield trained_project
    mlflow.set_tracking_uri(None)


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> dict[str, str]:
    """A fresh, empty project store for this test (applied to the process env)."""
    env = isolated_env(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


needs_real_data = pytest.mark.skipif(not REAL_TRAIN.exists(), reason=f"{REAL_TRAIN} not present (real data is optional)")


SESSION_EXPERIMENT_ID = os.environ.get("MLFLOW_EXPERIMENT_ID")


def reset_experiment_env() -> None:
    if SESSION_EXPERIMENT_ID is None:
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    else:
        os.environ["MLFLOW_EXPERIMENT_ID"] = SESSION_EXPERIMENT_ID


@pytest.fixture(autouse=True)
def mlflow_experiment_env_restored():
    """`mlflow.set_experiment` (in `configure_mlflow`) exports MLFLOW_EXPERIMENT_ID to this process's environment; a
    subprocess a test starts (a pipeline kernel on another store) would inherit an id that store does not have. Reset
    before each test (a module fixture may have set it) and after."""
    reset_experiment_env()
    yield
    reset_experiment_env()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


class FailingConnection:
    """A connection whose first INSERT raises `error`; everything else goes to the real connection."""

    def __init__(self, conn: sqlite3.Connection, error: BaseException):
        self.conn, self.error = conn, error

    def execute(self, sql, *args):
        if sql.startswith("INSERT") and self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def __enter__(self):
        return self.conn.__enter__()

    def __exit__(self, *exc):
        return self.conn.__exit__(*exc)
