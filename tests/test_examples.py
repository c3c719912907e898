"""Real public data that ships inside scikit-learn, end to end: each example CSV trains with its spec in
specs/examples/ (drafted by `make spec`), registers a champion that beats the dummy baseline, and scores its own rows."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from conftest import PROJECT_DIR, isolated_env, run_pipeline
from mlflow.tracking import MlflowClient

from nbs_lib.config import load_spec
from nbs_lib.data import read_table
from nbs_lib.validation import validate_frame
from src.examples import EXAMPLES, write_example


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_spec_passes_the_data_contract_of_its_csv(tmp_path, name):
    spec = load_spec(f"specs/examples/{name}.yaml", PROJECT_DIR)
    csv = write_example(name, tmp_path)
    report = validate_frame(read_table(csv, spec), spec)
    assert report.ok, report.summary(str(csv))
    assert spec.description and all(f.description for f in spec.features.values())


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_trains_a_champion_that_beats_the_dummy_baseline(tmp_path, name):
    spec = load_spec(f"specs/examples/{name}.yaml", PROJECT_DIR)
    csv = write_example(name, tmp_path / "input")
    env = isolated_env(tmp_path) | {"SPEC": f"specs/examples/{name}.yaml", "DATA": str(csv), "N_TRIALS": "3"}
    proc = run_pipeline(env)
    assert proc.returncode == 0, f"{name}: pipeline failed\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    gate = json.loads(Path(env["REPORTS_DIR"], "notebooks", "run_summary.json").read_text())["gate"]
    assert (gate["model_name"], gate["decision"], gate["promoted"]) == (spec.model_name, "promoted", True)
    assert gate["metric"] == spec.primary_metric
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        champ = MlflowClient().get_model_version_by_alias(spec.model_name, "champion")
        assert str(champ.version) == str(gate["version"])
        assert champ.tags["gate.decision"] == "promoted"
        score, baseline = float(champ.tags["gate.challenger_score"]), float(champ.tags["gate.baseline_score"])
        assert baseline == pytest.approx(gate["baseline_score"], abs=1e-6)
        assert score > baseline if spec.greater_is_better else score < baseline
        rows = read_table(csv, spec).head(20)
        preds = mlflow.pyfunc.load_model(f"models:/{spec.model_name}@champion").predict(rows.drop(columns=spec.target))
    finally:
        mlflow.set_tracking_uri(None)
    assert len(preds) == 20
    if spec.task == "classification":
        assert set(preds.tolist()) <= set(spec.target_levels)  # labels as the CSV writes them ("0", not 0)
    else:
        assert preds.dtype.kind == "f"
