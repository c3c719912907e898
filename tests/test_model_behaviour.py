"""Behaviour of the registered champion (trained on generated data by the session fixture): direction,
invariance and minimum functionality, checked through MLflow's pyfunc interface as a consumer would load it."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_DIR

from nbs_lib.config import load_spec
from nbs_lib.data import generate_synthetic

SPEC = load_spec("obesity", PROJECT_DIR)
LEVEL = {name: i for i, name in enumerate(SPEC.target_levels)}


@pytest.fixture(scope="module")
def model(trained_project):
    mlflow.set_tracking_uri(trained_project["MLFLOW_TRACKING_URI"])
    yield mlflow.pyfunc.load_model("models:/obesity@champion")
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def people() -> pd.DataFrame:
    return generate_synthetic(SPEC, rows=400, seed=123)[SPEC.feature_names]


def levels(model, X: pd.DataFrame) -> np.ndarray:
    return np.array([LEVEL[p] for p in model.predict(X)])


def test_raising_weight_at_fixed_height_never_lowers_the_predicted_level_on_average(model, people):
    means = []
    for extra_kg in (0, 5, 10, 20, 30):
        heavier = people.assign(Weight=(people.Weight + extra_kg).clip(upper=SPEC.features["Weight"].max))
        means.append(levels(model, heavier).mean())
    assert all(b >= a for a, b in zip(means, means[1:], strict=False)), means
    assert means[-1] > means[0] + 1  # and it really moves: 30 kg is more than one level on average


def test_a_feature_the_model_ignores_does_not_change_predictions(model, people):
    """`id` is dropped by the spec; extra columns and their order must not change a single prediction."""
    baseline = model.predict(people)
    with_ids = people.assign(id=np.random.default_rng(0).integers(0, 10**9, len(people)))
    reordered = with_ids[list(reversed(with_ids.columns))]
    np.testing.assert_array_equal(model.predict(with_ids), baseline)
    np.testing.assert_array_equal(model.predict(reordered), baseline)


@pytest.mark.parametrize("bmi_range, expected", [
    ((15.0, 17.0), "Insufficient_Weight"),
    ((20.0, 23.5), "Normal_Weight"),
    ((31.0, 33.5), "Obesity_Type_I"),
    ((44.0, 50.0), "Obesity_Type_III"),
])
def test_minimum_accuracy_on_easy_cases(model, people, bmi_range, expected):
    """People far from a class boundary: the label is obvious from BMI alone."""
    rng = np.random.default_rng(1)
    bmi = rng.uniform(*bmi_range, len(people))
    easy = people.assign(Weight=bmi * people.Height**2)
    easy = easy[easy.Weight.between(SPEC.features["Weight"].min, SPEC.features["Weight"].max)]
    accuracy = float((model.predict(easy) == expected).mean())
    assert accuracy >= 0.9, f"{expected}: {accuracy:.3f}"
