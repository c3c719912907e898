"""A dataset shaped unlike obesity, for the tests of what consumes a dataset or a registered model (data contract, API,
compiled predictor, prediction log, drift monitor): nullable features (numeric and categorical, a share and `true`),
column names that are not Python names, a derived feature over backticked names, and integer-like class labels.

`register_champion` registers a model of it the way 07_registry does (`register_with_gate`, with the training
split logged as `reference/train.parquet`) in a store under a folder of the test's own."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from conftest import isolated_env

from nbs_lib.config import Spec, configure_mlflow, get_settings
from nbs_lib.data import generate_synthetic
from nbs_lib.processing import clean_frame, split_holdout
from nbs_lib.tuning import default_config, make_model_pipeline

ODD = {
    "name": "odd",
    "description": "Mushroom-like measurements with gaps and awkward column names.",
    "task": "classification",
    "target": "quality",
    "target_levels": [3, 4, 5],          # integers in YAML, as a CSV holds them; the spec reads them as "3", "4", "5"
    "model_name": "odd",
    "primary_metric": "accuracy",
    "min_rows": 50,
    "features": {
        "cap-diameter": {"kind": "numeric", "min": 0, "max": 20, "nullable": 0.3, "description": "Width of the cap.",
                         "unit": "cm"},
        "stem width": {"kind": "numeric", "min": 0, "max": 10},
        "pH.level": {"kind": "numeric", "min": 2, "max": 5, "nullable": True},
        "2nd_reading": {"kind": "categorical", "levels": ["low", "mid", "high"], "nullable": 0.3},
        "class": {"kind": "categorical", "levels": [0, 1]},
    },
    "derived_features": {"cap per stem": "`cap-diameter` / (`stem width` + 1)"},
    "synthetic": {
        "rows": 500, "seed": 3,
        "columns": {"cap-diameter": {"null_share": 0.1}, "pH.level": {"null_share": 0.2}, "2nd_reading": {"null_share": 0.15}},
        "target": {"expression": "`cap-diameter` / 4 + `stem width` / 2 + `pH.level`", "shares": [1, 1, 1], "noise_std": 0.3},
    },
}
SPEC = Spec.model_validate(ODD)


def write_spec(folder: Path) -> Path:
    """The spec as a YAML file under `folder` (what SPEC= names)."""
    path = Path(folder) / "odd.yaml"
    path.write_text(yaml.safe_dump(ODD, sort_keys=False))
    return path


def odd_frame(rows: int = 500, seed: int = 1) -> pd.DataFrame:
    """Generated rows of the spec, with empty cells in the nullable features (NaN in numbers, None in text)."""
    return generate_synthetic(SPEC, rows, seed=seed)


def as_requests(frame: pd.DataFrame) -> list[dict]:
    """The rows' features as API records: empty cells as None (JSON null)."""
    feats = frame[SPEC.feature_names].astype(object)
    return feats.where(feats.notna(), None).to_dict("records")


def as_frame(records: list[dict]) -> pd.DataFrame:
    """Records as the frame the model is given (as the API's pipeline predictor builds it): the features in spec
    order, numeric ones as floats, so an empty cell is NaN."""
    return pd.DataFrame.from_records(records, columns=SPEC.feature_names).astype({c: "float64" for c in SPEC.numeric_features})


def fit_model(rows: int = 500, seed: int = 1):
    """The default LightGBM pipeline fitted on a generated train split; returns (pipeline, train, holdout)."""
    train, holdout = split_holdout(clean_frame(odd_frame(rows, seed), SPEC), SPEC)
    model = make_model_pipeline(default_config(SPEC), SPEC, n_jobs=1).fit(train[SPEC.feature_names], train[SPEC.target])
    return model, train, holdout


def register_champion(root: Path) -> tuple[dict[str, str], object]:
    """Register a fitted model of the spec as `odd@champion` in a store under `root`, with its reference snapshot.
    Returns the env that points the API and the monitor at it (SPEC included) and the fitted pipeline."""
    import mlflow

    from nbs_lib.registry import register_with_gate

    root = Path(root)
    env = {**isolated_env(root), "SPEC": str(write_spec(root))}
    settings = get_settings(spec=env["SPEC"], models_dir=env["MODELS_DIR"], data_dir=env["DATA_DIR"],
                            reports_dir=env["REPORTS_DIR"], mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"])
    model, train, holdout = fit_model()
    reference = root / "train.parquet"
    train.to_parquet(reference, index=False)
    try:
        exp_id = configure_mlflow(settings, SPEC)
        with mlflow.start_run(experiment_id=exp_id, run_name="odd-registration") as run:
            mlflow.log_artifact(str(reference), artifact_path="reference")
        result = register_with_gate(model, holdout, SPEC, settings, {"lineage.profile": "test"}, run.info.run_id)
        assert result.promoted, result.reason
    finally:
        mlflow.set_tracking_uri(None)
    return env, model
