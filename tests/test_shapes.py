"""Tables that are not shaped like obesity, end to end with no code: all-numeric regression with odd column names
and nulls, all-categorical binary 95/5 with integer labels and two ids, a wide and small multiclass table with
integer-like labels. Each goes pipeline -> champion that beats the dummy baseline -> API equal to pyfunc ->
`make validate` -> `make monitor`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import isolated_env, run_pipeline
from fastapi.testclient import TestClient
from shapes import SHAPES, write_spec

from nbs_lib.config import Spec
from nbs_lib.data import generate_synthetic, read_table
from nbs_lib.publishing import read_latest


@pytest.fixture(scope="module", params=list(SHAPES))
def shape_run(request, tmp_path_factory) -> dict:
    """The pipeline run once (smoke, 3 trials) on a generated table of this shape; its env, spec, CSV and summary."""
    root = tmp_path_factory.mktemp(request.param)
    spec_dict = SHAPES[request.param]()
    spec = Spec.model_validate(spec_dict)
    csv = root / f"{spec.name}.csv"
    generate_synthetic(spec).to_csv(csv, index=False)
    env = isolated_env(root) | {"SPEC": str(write_spec(spec_dict, root)), "DATA": str(csv), "N_TRIALS": "3"}
    proc = run_pipeline(env)
    assert proc.returncode == 0, f"spec {spec_dict}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = json.loads((root / "reports" / "notebooks" / "run_summary.json").read_text())
    return {"env": env, "spec": spec, "csv": csv, "summary": summary, "stdout": proc.stdout}


@pytest.fixture
def applied(shape_run, monkeypatch) -> dict:
    for k, v in shape_run["env"].items():
        monkeypatch.setenv(k, v)
    mlflow.set_tracking_uri(shape_run["env"]["MLFLOW_TRACKING_URI"])
    yield shape_run
    mlflow.set_tracking_uri(None)


def test_each_shape_registers_a_champion_that_beats_the_dummy_baseline(shape_run):
    spec, gate = shape_run["spec"], shape_run["summary"]["gate"]
    assert gate["decision"] == "promoted" and gate["version"] == "1"
    better = gate["challenger_score"] > gate["baseline_score"] if spec.greater_is_better else gate["challenger_score"] < gate["baseline_score"]
    assert better, gate
    assert "beats the dummy baseline" in shape_run["stdout"]
    client = mlflow.MlflowClient(shape_run["env"]["MLFLOW_TRACKING_URI"], shape_run["env"]["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version_by_alias(spec.model_name, "champion")
    assert float(mv.tags["gate.baseline_score"]) == pytest.approx(gate["baseline_score"], abs=1e-6)


def test_each_shape_serves_the_same_predictions_as_the_registered_pyfunc(applied):
    from src.serving.app import create_app

    spec = applied["spec"]
    rows = read_table(applied["csv"], spec).head(40)
    features = rows[spec.feature_names]
    records = [{c: (None if pd.isna(v) else v) for c, v in r.items()} for r in features.to_dict("records")]
    if spec.nullable_features:
        assert any(r[c] is None for r in records for c in spec.nullable_features), "the sample should hold empty cells"
    expected = mlflow.pyfunc.load_model(f"models:/{spec.model_name}@champion").predict(features.astype({c: float for c in spec.numeric_features}))
    with TestClient(create_app()) as client:
        batch = client.post("/predict/batch", json={"records": records})
        single = client.post("/predict", json=records[0])
    assert batch.status_code == 200, batch.text
    assert single.status_code == 200, single.text
    got = [p["prediction"] for p in batch.json()["predictions"]]
    if spec.task == "classification":
        assert got == [str(v) for v in expected]
        assert single.json()["prediction"] == str(expected[0])
        assert set(single.json()["probabilities"]) <= set(spec.target_levels)
    else:
        np.testing.assert_allclose(got, np.asarray(expected, dtype=float), rtol=1e-9)
        assert math.isclose(single.json()["prediction"], float(expected[0]), rel_tol=1e-9)


def test_each_shape_passes_validate_and_monitor_on_its_own_data(applied, capsys):
    from src.monitoring import monitor
    from src.validate import main as validate

    assert validate(["--policy", "current"]) == 0, capsys.readouterr()
    assert "passes the" in capsys.readouterr().out
    assert monitor.main(["--current", str(applied["csv"])]) == 0, capsys.readouterr()
    latest = read_latest(Path(applied["env"]["REPORTS_DIR"]) / "monitoring")
    assert latest["dataset_drift"] is False
    assert latest["current"]["rows"] == len(read_table(applied["csv"], applied["spec"]))


def test_a_table_below_min_rows_is_refused_with_the_fix_and_nothing_written(tmp_path, monkeypatch, capsys):
    from src.pipeline import main

    spec_dict = SHAPES["wide_multiclass_small"]() | {"min_rows": 100}
    csv = tmp_path / "small.csv"
    generate_synthetic(Spec.model_validate(spec_dict), rows=60).to_csv(csv, index=False)
    for k, v in (isolated_env(tmp_path) | {"SPEC": str(write_spec(spec_dict, tmp_path)), "DATA": str(csv)}).items():
        monkeypatch.setenv(k, v)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "60 rows" in err and "at least 100 rows are needed (the spec's min_rows" in err and "lower min_rows" in err
    assert not (tmp_path / "data" / "raw").exists() and not (tmp_path / "reports").exists()


def test_a_target_the_features_do_not_explain_is_registered_not_promoted_and_exits_1(tmp_path):
    spec_dict = {"name": "noise", "task": "regression", "target": "y", "model_name": "noise", "primary_metric": "rmse",
                 "min_rows": 50, "features": {"a": {"kind": "numeric", "min": 0, "max": 1}, "b": {"kind": "numeric", "min": 0, "max": 1}},
                 "synthetic": {"rows": 300, "seed": 4, "target": {"expression": "0 * a", "noise_std": 10}}}
    csv = tmp_path / "noise.csv"
    generate_synthetic(Spec.model_validate(spec_dict)).to_csv(csv, index=False)
    env = isolated_env(tmp_path) | {"SPEC": str(write_spec(spec_dict, tmp_path)), "DATA": str(csv), "N_TRIALS": "3"}
    proc = run_pipeline(env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "does not beat the dummy baseline (always the mean of the training target)" in proc.stdout
    assert "registered but not promoted; the champion is where it was" in proc.stderr
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    assert client.get_model_version("noise", "1").tags["gate.decision"] == "rejected"
    assert client.get_registered_model("noise").aliases == {}
