"""Property-based proof that any table a spec can describe runs the whole chain with no code: hypothesis draws specs
across the dimensions users bring (task, numeric-only or categorical-only, ids, nullable features, odd column names,
integer labels written as ints or strings, class imbalance, small tables), the spec's own generator makes the data,
and each example goes contract -> split -> search -> registration gate -> API (equal to pyfunc) -> drift check.

`make test` runs 15 examples on tiny data with a tiny search; `pytest -m slow` runs 60 more.
A failing example prints the spec it drew as YAML."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from nbs_lib.config import Profile, Spec, get_settings
from nbs_lib.data import generate_synthetic, read_table
from nbs_lib.drift import run_monitor
from nbs_lib.processing import clean_frame, features_target, split_holdout
from nbs_lib.registry import baseline_score, beats, fit_final, register_with_gate
from nbs_lib.tuning import best_config, open_study, run_study
from nbs_lib.validation import validate_frame, validate_training_frame

ODD_NAMES = ["cap-diameter", "stem width", "pH.level", "2nd_reading", "class", "Total (USD)", "naïve", "x"]
TINY = Profile(name="tiny", n_trials=2, cv_folds=2, timeout_s=120, max_estimators=60)


@st.composite
def specs(draw) -> dict:
    """A spec dict of any supported shape, with a synthetic section whose target depends on the features."""
    task = draw(st.sampled_from(["classification", "regression"]))
    n_num, n_cat = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)).filter(lambda t: sum(t) > 0))
    names = draw(st.lists(st.sampled_from(ODD_NAMES), min_size=n_num + n_cat, max_size=n_num + n_cat, unique=True))
    names = [n if draw(st.booleans()) else f"f{i}_" + (re.sub(r"\W", "", n) or "v") for i, n in enumerate(names)]
    features, columns, terms = {}, {}, []
    for name in names[:n_num]:
        lo = draw(st.sampled_from([-100.0, 0.0, 1.0]))
        features[name] = {"kind": "numeric", "min": lo, "max": lo + draw(st.sampled_from([1.0, 10.0, 500.0]))}
        terms.append(f"(`{name}` - {lo}) / {features[name]['max'] - lo}")
    for name in names[n_num:]:
        k = draw(st.sampled_from([2, 3, 7, 210]))
        int_levels = draw(st.booleans())
        levels = list(range(k)) if int_levels else [f"lvl {i}" for i in range(k)]
        features[name] = {"kind": "categorical", "levels": levels if int_levels and draw(st.booleans()) else [str(v) for v in levels]}
        terms.append(f"(`{name}` == '{levels[0]}') + 0.5 * (`{name}` == '{levels[1]}')")
    for name in names:
        if draw(st.booleans()):
            features[name]["nullable"] = True
            columns[name] = {"null_share": 0.08}
    spec = {"name": "drawn", "task": task, "target": "target value" if draw(st.booleans()) else "y", "model_name": "drawn",
            "min_rows": 40, "features": features,
            "id_columns": draw(st.sampled_from([[], ["id"], ["id", "row key"]])),
            "synthetic": {"rows": draw(st.sampled_from([150, 300])), "seed": draw(st.integers(0, 99)), "columns": columns,
                          "target": {"expression": " + ".join(terms), "noise_std": 0.05}}}
    if n_num and draw(st.booleans()):
        spec["derived_features"] = {"derived sq": f"`{names[0]}` ** 2"}
    if task == "classification":
        k = draw(st.integers(2, 4))
        labels = draw(st.sampled_from(["ints", "int text", "words"]))
        spec["target_levels"] = list(range(3, 3 + k)) if labels == "ints" else [str(i) for i in range(k)] if labels == "int text" \
            else [f"class {chr(97 + i)}" for i in range(k)]
        shares = [0.9, 0.1] if k == 2 and draw(st.booleans()) else [1 / k] * k
        spec["synthetic"]["target"]["shares"] = shares
        spec["primary_metric"] = "balanced_accuracy" if min(shares) < 0.15 else draw(st.sampled_from(["accuracy", "f1_macro"]))
    else:
        spec["primary_metric"] = draw(st.sampled_from(["rmse", "mae", "r2"]))
        spec["synthetic"]["target"]["expression"] = f"100 * ({spec['synthetic']['target']['expression']})"
    return spec


def run_chain(spec_dict: dict, root, monkeypatch) -> None:
    "Everything a user's table goes through, in-process, on the stores under `root`."
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict, sort_keys=False, allow_unicode=True))
    spec = Spec.model_validate(yaml.safe_load(spec_path.read_text()))
    csv = root / "data.csv"
    generate_synthetic(spec).to_csv(csv, index=False)
    raw = read_table(csv, spec)
    validate_training_frame(raw, spec, source=str(csv))
    train, holdout = split_holdout(clean_frame(raw, spec), spec)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {"MODELS_DIR": str(root), "MLFLOW_TRACKING_URI": uri, "OPTUNA_STORAGE": f"sqlite:///{root / 'optuna.db'}",
           "SPEC": str(spec_path), "PREDICTION_LOG": str(root / "log.db"), "REPORTS_DIR": str(root / "reports"),
           "DATA_DIR": str(root / "data")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = get_settings()
    study = run_study(open_study(cfg, spec, "drawn", TINY), *features_target(train, spec), spec, TINY, log_mlflow=False)
    model = fit_final(best_config(study, spec), train, spec)
    baseline = baseline_score(train, holdout, spec)
    mlflow.set_tracking_uri(uri)   # an experiment of its own keeps artifacts under root, not in ./mlruns
    with mlflow.start_run(experiment_id=mlflow.create_experiment("drawn", (root / "artifacts").as_uri())) as run:
        gate = register_with_gate(model, holdout, spec, cfg, {}, run.info.run_id, baseline)
    event(f"{spec.task}: {'promoted' if gate.promoted else 'did not beat the dummy'}")   # --hypothesis-show-statistics
    if not gate.promoted:   # a tiny search on 150 rows may lose to the dummy: the gate must then say so, and keep nothing
        assert "does not beat the dummy baseline" in gate.reason and not beats(gate.challenger_score, baseline, spec.greater_is_better)
        return
    from src.serving.app import create_app

    X = features_target(holdout, spec)[0].head(20)
    records = [{c: (None if pd.isna(v) else v) for c, v in r.items()} for r in X.to_dict("records")]
    expected = mlflow.pyfunc.load_model(f"models:/{spec.model_name}@champion").predict(X)
    with TestClient(create_app()) as client:
        answer = client.post("/predict/batch", json={"records": records})
        assert answer.status_code == 200, answer.text
        got = [p["prediction"] for p in answer.json()["predictions"]]
        bad = client.post("/predict", json={**records[0], spec.feature_names[0]: "not a value"})
        assert bad.status_code == 422 and spec.feature_names[0] in bad.text, bad.text
    if spec.task == "classification":
        assert got == [str(v) for v in expected]
    else:
        np.testing.assert_allclose(got, np.asarray(expected, dtype=float), rtol=1e-9)
    assert validate_frame(raw, spec, "current").ok
    result = run_monitor(raw, train, spec)
    assert set(result.summary["columns"]) >= {c for c in spec.feature_names if raw[c].notna().any()}


def check_drawn(spec: dict, tmp_path_factory, monkeypatch) -> None:
    "The chain on one drawn spec, in a folder of its own; a failure prints the spec as YAML."
    note("drawn spec:\n" + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    try:
        run_chain(spec, tmp_path_factory.mktemp("drawn"), monkeypatch)
    finally:
        mlflow.set_tracking_uri(None)


# Each example trains and serves a model (seconds), so no shrinking: a failure prints the spec it drew, as drawn.
PROPERTY = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                derandomize=True, phases=[Phase.explicit, Phase.generate], print_blob=True)


@settings(max_examples=15, **PROPERTY)
@given(spec=specs())
def test_any_spec_the_format_allows_runs_the_whole_chain(spec, tmp_path_factory, monkeypatch):
    check_drawn(spec, tmp_path_factory, monkeypatch)


@pytest.mark.slow
@settings(max_examples=60, **(PROPERTY | {"derandomize": False}))
@given(spec=specs())
def test_any_spec_runs_the_whole_chain_more_examples(spec, tmp_path_factory, monkeypatch):
    check_drawn(spec, tmp_path_factory, monkeypatch)
