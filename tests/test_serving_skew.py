"""Train/serve skew: for 500 records the API answers exactly what the registered model answers when MLflow loads it
(`mlflow.pyfunc.load_model("models:/obesity@champion").predict`), one at a time and in one batch."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_DIR
from fastapi.testclient import TestClient

from nbs_lib.config import load_spec
from nbs_lib.data import generate_synthetic
from nbs_lib.predictor import probe_records

SPEC = load_spec("obesity", PROJECT_DIR)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """400 realistic records and 100 spread over the whole allowed range of every feature and level."""
    realistic = generate_synthetic(SPEC, rows=400, seed=321)[SPEC.feature_names]
    return pd.concat([realistic, pd.DataFrame(probe_records(SPEC, 100, seed=4))], ignore_index=True)


@pytest.fixture(scope="module")
def served(trained_project, tmp_path_factory):
    from src.serving.app import create_app

    env = {**trained_project, "PREDICTION_LOG": str(tmp_path_factory.mktemp("skew") / "p.db")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with TestClient(create_app()) as client:
            yield client


@pytest.fixture(scope="module")
def reference(trained_project, rows):
    """The champion as MLflow serves it: pyfunc labels, and the sklearn flavour's probabilities."""
    mlflow.set_tracking_uri(trained_project["MLFLOW_TRACKING_URI"])
    try:
        labels = mlflow.pyfunc.load_model("models:/obesity@champion").predict(rows)
        pipe = mlflow.sklearn.load_model("models:/obesity@champion")
        proba = pd.DataFrame(pipe.predict_proba(rows), columns=pipe.classes_)[SPEC.target_levels]
    finally:
        mlflow.set_tracking_uri(None)
    return list(labels), proba.to_numpy()


def test_rows_cover_every_level_of_every_categorical_feature(rows):
    assert len(rows) == 500
    for c in SPEC.categorical_features:
        assert set(rows[c]) == set(SPEC.features[c].levels), c


def test_batch_predictions_equal_the_registered_models(served, rows, reference):
    r = served.post("/predict/batch", json={"records": rows.to_dict("records")})
    assert r.status_code == 200
    got = r.json()["predictions"]
    assert [p["prediction"] for p in got] == reference[0]
    proba = np.array([[p["probabilities"][c] for c in SPEC.target_levels] for p in got])
    np.testing.assert_allclose(proba, reference[1], rtol=0, atol=1e-12)


def test_single_record_predictions_equal_the_registered_models(served, rows, reference):
    got = [served.post("/predict", json=rec).json() for rec in rows.to_dict("records")]
    assert [p["prediction"] for p in got] == reference[0]
    proba = np.array([[p["probabilities"][c] for c in SPEC.target_levels] for p in got])
    np.testing.assert_allclose(proba, reference[1], rtol=0, atol=1e-12)
