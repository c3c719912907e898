"""Drift monitoring: `make monitor` on the real drift case and on synthetic drift, bad input, the prediction log
against the champion's reference, sampling, `make retrain-if-drift`, and the notebook under papermill."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_DIR, REAL_CURRENT, REAL_TRAIN, needs_real_data

from nbs_lib.champion import prepare_frame
from nbs_lib.config import load_spec
from nbs_lib.data import generate_synthetic
from nbs_lib.drift import inject_drift, sample_current
from nbs_lib.predictions import PredictionLog
from src.monitoring import monitor, retrain

SPEC = load_spec("obesity", PROJECT_DIR)
REPORT_FILES = ["data_drift.html", "data_summary.html", "summary.json"]
INJECTED = {"Weight": 1.0, "Age": 0.7, "FAF": 0.7, "TUE": 0.7, "CH2O": 0.7}


@pytest.fixture
def reports(tmp_path, monkeypatch) -> Path:
    """A fresh REPORTS_DIR for this test; returns its monitoring folder."""
    monkeypatch.setenv("REPORTS_DIR", str(tmp_path / "reports"))
    return tmp_path / "reports" / "monitoring"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """A generated reference, a same-distribution current set and a drifted one, as CSVs."""
    folder = tmp_path_factory.mktemp("synthetic")
    same = generate_synthetic(SPEC, 1500, seed=2)
    frames = {"reference": generate_synthetic(SPEC, 4000, seed=1), "same": same,
              "drifted": inject_drift(same, SPEC, shift=INJECTED, mix={"MTRANS": {"Automobile": 3, "Walking": 1}}, seed=3)}
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return {name: folder / f"{name}.csv" for name in frames}


def published(reports: Path, run: str) -> list[str]:
    return sorted(p.name for p in (reports / run).iterdir())


@needs_real_data
def test_monitor_flags_drift_between_kaggle_train_and_uci_and_lists_the_columns(isolated, reports, capsys):
    status, result = monitor.run(["--current", str(REAL_CURRENT), "--reference", str(REAL_TRAIN)])
    s = result.summary
    assert status == monitor.DRIFT
    assert (s["dataset_drift"], s["drifted_count"], s["columns_checked"], s["threshold"]) == (True, 9, 17, 0.3)
    assert [c["column"] for c in s["drifted_columns"]] == ["Age", "Height", "Weight", "FCVC", "NCP", "CH2O", "FAF", "TUE", "BMI"]
    assert {c["test"] for c in s["drifted_columns"]} == {"K-S p_value"}
    assert all(c["score"] < c["threshold"] == 0.05 for c in s["drifted_columns"])
    assert (s["current"]["rows"], s["current"]["sampled"], s["reference"]["rows"]) == (2111, False, 20758)
    assert published(reports, s["run"]) == REPORT_FILES
    assert json.loads((reports / "latest" / "summary.json").read_text())["run"] == s["run"]
    assert capsys.readouterr().out.startswith("DRIFT: 9 of 17 columns drifted (share 0.53, threshold 0.30)\n  Age ")


@needs_real_data
def test_monitor_finds_no_drift_in_a_random_30pct_sample_of_the_reference(isolated, reports, tmp_path):
    sample = pd.read_csv(REAL_TRAIN).sample(frac=0.3, random_state=7)
    sample.to_csv(tmp_path / "sample.csv", index=False)
    status, result = monitor.run(["--current", str(tmp_path / "sample.csv"), "--reference", str(REAL_TRAIN)])
    s = result.summary
    assert status == monitor.NO_DRIFT
    assert (s["dataset_drift"], s["drifted_count"], s["drifted_columns"]) == (False, 0, [])
    assert s["current"]["rows"] == len(sample) == 6227
    assert s["target_drift"]["drifted"] is False


def test_monitor_flags_injected_drift_but_not_data_from_the_same_distribution(isolated, reports, synthetic):
    drift_status, drifted = monitor.run(["--current", str(synthetic["drifted"]), "--reference", str(synthetic["reference"])])
    same_status, same = monitor.run(["--current", str(synthetic["same"]), "--reference", str(synthetic["reference"])])
    assert (drift_status, same_status) == (monitor.DRIFT, monitor.NO_DRIFT)
    assert {c["column"] for c in drifted.summary["drifted_columns"]} == {*INJECTED, "BMI", "MTRANS"}
    assert drifted.summary["columns"]["MTRANS"]["test"] == "Jensen-Shannon distance"
    assert same.summary["drifted_count"] == 0
    assert read_link(reports) == same.summary["run"]


def read_link(reports: Path) -> str:
    return (reports / "latest").readlink().name


def test_null_column_and_unseen_category_give_a_report_with_findings_not_a_crash(isolated, reports, synthetic, tmp_path, capsys):
    current = generate_synthetic(SPEC, 800, seed=4)
    current["FAF"] = np.nan
    current.loc[:19, "MTRANS"] = "Hoverboard"
    current.to_csv(tmp_path / "current.csv", index=False)
    status, result = monitor.run(["--current", str(tmp_path / "current.csv"), "--reference", str(synthetic["reference"])])
    s = result.summary
    assert status == monitor.NO_DRIFT
    findings = {(f["column"], f["expectation"]): f for f in s["data_quality"]["findings"]}
    assert findings["FAF", "expect_column_values_to_not_be_null"]["unexpected_count"] == 800
    assert findings["MTRANS", "expect_column_values_to_be_in_set"]["unexpected_count"] == 20
    assert findings["MTRANS", "expect_column_values_to_be_in_set"]["examples"] == ["Hoverboard"]
    assert s["data_quality"]["skipped_columns"] == {"FAF": "no values in the current data"}
    assert "FAF" not in s["columns"] and s["columns_checked"] == 16
    assert published(reports, s["run"]) == REPORT_FILES
    out = capsys.readouterr().out
    assert "drift not computed for 'FAF': no values in the current data" in out
    assert "'Hoverboard'" in out


@pytest.mark.parametrize("case, message", [
    ("no reference and no champion", "no model with alias 'champion' in 'obesity'; run make pipeline, or give `make monitor` a REFERENCE=<csv>"),
    ("missing column", "The current data has no column(s) 'Age', 'MTRANS'"),
    ("missing file", "does not exist"),
    ("empty window", "No predictions were logged between"),
])
def test_bad_monitor_input_exits_2_with_what_to_do_and_writes_nothing(isolated, reports, synthetic, tmp_path, capsys,
                                                                        case, message):
    ref = ["--reference", str(synthetic["reference"])]
    args = {"no reference and no champion": ["--current", str(synthetic["same"])],
            "missing column": ["--current", str(tmp_path / "cut.csv"), *ref],
            "missing file": ["--current", str(tmp_path / "nowhere.csv"), *ref],
            "empty window": ["--current", str(tmp_path / "empty.db"), *ref]}[case]
    pd.read_csv(synthetic["same"]).drop(columns=["Age", "MTRANS"]).to_csv(tmp_path / "cut.csv", index=False)
    status, result = monitor.run(args)
    assert (status, result) == (monitor.USER_ERROR, None)
    assert message in capsys.readouterr().err
    assert not reports.exists()
    assert not Path(isolated["MODELS_DIR"]).exists()   # looking for a champion created no store


def champion_predictions(frame: pd.DataFrame) -> np.ndarray:
    """The champion's labels for `frame` (MLflow points at the trained project)."""
    model = mlflow.sklearn.load_model("models:/obesity@champion")
    return np.asarray(model.predict(frame[SPEC.feature_names])).astype(str)


def test_monitor_reads_a_prediction_log_window_against_the_champion_reference(project_env, reports, tmp_path):
    rows = generate_synthetic(SPEC, 300, seed=5)
    preds = champion_predictions(rows)
    records = rows[SPEC.feature_names].to_dict(orient="records")
    log = PredictionLog(tmp_path / "predictions.db")
    log.append(records[:240], list(preds[:240]), "obesity", "1", ts=1_700_000_100.0)
    log.append(records[240:], list(preds[240:]), "obesity", "1", ts=1_700_090_000.0)   # a day later: outside
    log.close()
    status, result = monitor.run(["--current", str(tmp_path / "predictions.db"),
                                  "--since", "2023-11-14T22:00:00Z", "--until", "2023-11-15T22:00:00Z"])
    s = result.summary
    assert status == monitor.NO_DRIFT
    assert (s["current"]["rows"], s["current"]["model_versions"], s["current"]["since"]) == (240, ["1"], "2023-11-14T22:00:00+00:00")
    assert s["reference"]["source"].startswith("models:/obesity@champion (v1, run ")
    assert s["reference"]["source"].endswith(") reference/train.parquet")
    assert (s["model"]["name"], s["model"]["version"]) == ("obesity", "1")
    assert set(s["model"]["holdout_metrics"]) == {"accuracy", "balanced_accuracy", "f1_macro"}
    assert s["prediction_drift"]["column"] == "prediction" and s["prediction_drift"]["drifted"] is False
    assert s["performance"] is None and s["target_drift"] is None   # production data has no labels
    assert published(reports, s["run"]) == REPORT_FILES


def test_a_large_labelled_set_is_sampled_stratified_and_scored_by_the_champion(project_env, reports, tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_SAMPLE_ROWS", "1000")
    labelled = generate_synthetic(SPEC, 3000, seed=6)
    labelled.to_csv(tmp_path / "labelled.csv", index=False)
    status, result = monitor.run(["--current", str(tmp_path / "labelled.csv")])
    s = result.summary
    sample = prepare_frame(sample_current(labelled, SPEC, 1000, seed=42)[0], SPEC)
    accuracy = float((champion_predictions(sample) == sample[SPEC.target]).mean())
    assert status == monitor.NO_DRIFT
    assert (s["current"]["rows"], s["current"]["sampled"], s["current"]["stratified_on"]) == (3000, True, "NObeyesdad")
    assert s["current"]["sample_size"] == len(sample)
    assert abs(len(sample) - 1000) <= 7
    assert s["performance"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert published(reports, s["run"]) == ["data_drift.html", "data_summary.html", "performance.html", "summary.json"]


def test_sigterm_during_a_drift_check_publishes_nothing_and_says_so(isolated, reports, synthetic, monkeypatch, capsys):
    """docker stop (or the scheduler passing SIGTERM on) mid-check: exit 143 with one paragraph, no partial report."""
    import os
    import signal
    import threading

    def slow_monitor(*args, **kwargs):  # the check is busy when the signal lands
        time.sleep(10)
        return monitor_sources(*args, **kwargs)

    monitor_sources = monitor.monitor_sources
    monkeypatch.setattr(monitor, "monitor_sources", slow_monitor)
    handler_before = signal.getsignal(signal.SIGTERM)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    status, result = monitor.run(["--current", str(synthetic["drifted"]), "--reference", str(synthetic["reference"])])
    assert (status, result) == (143, None)
    assert time.monotonic() - started < 5
    assert "SIGTERM: the drift check was stopped." in capsys.readouterr().err
    assert not reports.exists() or not any(reports.iterdir())
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the handler is gone with the check


@pytest.mark.parametrize("case, pipeline_status, expected_status, pipeline_runs", [
    ("drifted", 0, 0, 1), ("drifted", 1, 1, 1), ("same", 0, 0, 0), ("missing.csv", 0, 2, 0)])
def test_retrain_if_drift_runs_the_pipeline_only_when_drift_crossed_the_threshold(
        isolated, reports, synthetic, tmp_path, monkeypatch, capsys, case, pipeline_status, expected_status, pipeline_runs):
    calls = []
    monkeypatch.setattr(retrain, "run_pipeline", lambda: calls.append(1) or pipeline_status)
    current = synthetic[case] if case in synthetic else tmp_path / case
    status = retrain.main(["--current", str(current), "--reference", str(synthetic["reference"])])
    assert (status, len(calls)) == (expected_status, pipeline_runs)
    out = capsys.readouterr().out
    if pipeline_runs:
        assert "drift crossed the threshold: running the pipeline (its gate decides whether the champion moves)" in out
    elif expected_status == 0:
        assert out.rstrip().endswith("no retraining: the drift is below the threshold, the champion stays.")


def test_the_monitoring_notebook_runs_under_papermill_with_parameters(isolated, synthetic, tmp_path):
    import papermill as pm

    started = time.time()
    pm.execute_notebook(PROJECT_DIR / "notebooks" / "13_monitor.ipynb", tmp_path / "executed.ipynb",
                        parameters={"current": str(synthetic["drifted"]), "reference": str(synthetic["reference"]),
                                    "reports_dir": str(tmp_path / "monitoring")},
                        cwd=str(PROJECT_DIR / "notebooks"), kernel_name="python3", progress_bar=False)
    summary = json.loads((tmp_path / "monitoring" / "latest" / "summary.json").read_text())
    assert (summary["current"]["source"], summary["reference"]["source"]) == (str(synthetic["drifted"]), str(synthetic["reference"]))
    assert summary["dataset_drift"] is True
    assert summary["created_at"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1))


# ------------------------------------------- another shape of dataset: gaps, odd column names, integer labels ----

@pytest.fixture(scope="module")
def odd_champion(tmp_path_factory):
    """(env, pipeline) of a registered champion of the odd spec (tests/odd_spec.py), with its reference."""
    from odd_spec import register_champion

    return register_champion(tmp_path_factory.mktemp("odd-monitoring"))


@pytest.fixture
def odd_env(odd_champion, reports, monkeypatch) -> dict[str, str]:
    env = {k: v for k, v in odd_champion[0].items() if k != "REPORTS_DIR"}   # reports: this test's own folder
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


ODD_COLUMNS = ["2nd_reading", "cap per stem", "cap-diameter", "class", "pH.level", "stem width"]


def test_monitor_reads_a_log_with_nulls_and_odd_names_against_the_champion_reference(odd_env, odd_champion, reports, tmp_path):
    from odd_spec import as_frame, as_requests, odd_frame

    records = as_requests(odd_frame(300, seed=21))
    assert sum(r["cap-diameter"] is None for r in records) > 0 and sum(r["2nd_reading"] is None for r in records) > 0
    log = PredictionLog(tmp_path / "predictions.db")
    log.append(records, odd_champion[1].predict(as_frame(records)).tolist(), "odd", "1", ts=1_700_000_100.0)
    log.close()
    status, result = monitor.run(["--current", str(tmp_path / "predictions.db"),
                                  "--since", "2023-11-14T22:00:00Z", "--until", "2023-11-15T22:00:00Z"])
    s = result.summary
    assert status == monitor.NO_DRIFT
    assert s["data_quality"] == {"ok": True, "rows": 300, "findings": [], "skipped_columns": {}}   # gaps within their shares
    assert sorted(s["columns"]) == ODD_COLUMNS
    assert s["prediction_drift"]["column"] == "prediction" and s["prediction_drift"]["drifted"] is False
    assert s["reference"]["source"].startswith("models:/odd@champion (v1, run ")
    assert published(reports, s["run"]) == REPORT_FILES


def test_columns_entirely_empty_in_current_data_are_skipped_with_a_finding_not_a_crash(odd_env, reports, tmp_path, capsys):
    from odd_spec import odd_frame

    current = odd_frame(300, seed=22).assign(**{"2nd_reading": None, "pH.level": np.nan})
    current.to_csv(tmp_path / "current.csv", index=False)
    status, result = monitor.run(["--current", str(tmp_path / "current.csv")])
    s = result.summary
    assert status == monitor.NO_DRIFT
    # pH.level may be empty in every row (nullable: true); 2nd_reading in at most 30% of them
    assert [(f["column"], f["expectation"], f["unexpected_count"], f["message"]) for f in s["data_quality"]["findings"]] == [
        ("2nd_reading", "expect_column_values_to_not_be_null", 300,
         "finding: expect_column_values_to_not_be_null failed on column '2nd_reading': 300 rows (100.00%); at most 30% "
         "of the values may be empty (the spec's nullable share)")]
    assert s["data_quality"]["skipped_columns"] == {"pH.level": "no values in the current data",
                                                    "2nd_reading": "no values in the current data"}
    assert sorted(s["columns"]) == ["cap per stem", "cap-diameter", "class", "stem width"]
    assert s["performance"]["accuracy"] is not None
    assert published(reports, s["run"]) == ["data_drift.html", "data_summary.html", "performance.html", "summary.json"]
    assert "drift not computed for '2nd_reading': no values in the current data" in capsys.readouterr().out
