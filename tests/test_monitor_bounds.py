"""The monitor's memory is bounded by DRIFT_SAMPLE_ROWS, not by the prediction log's window: it reads a seeded random
sample of the window (and its true size), and only that sample is validated and monitored, also when the API runs it.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nbs_lib.drift as drift
import nbs_lib.predictions as predictions
from nbs_lib.config import get_settings, load_spec
from nbs_lib.data import generate_synthetic
from nbs_lib.drift import get_drift_settings
from nbs_lib.monitor import monitor_sources
from nbs_lib.predictions import PredictionLog, read_prediction_log, sample_prediction_log

PROJECT_DIR = Path(__file__).resolve().parents[1]
NOON = pd.Timestamp("2025-01-01T12:00Z").timestamp()
DAY = ("2025-01-01T00:00Z", "2025-01-02T00:00Z")


@pytest.fixture(scope="module")
def spec():
    return load_spec("specs/obesity.yaml", PROJECT_DIR)


def write_log(path: Path, frame: pd.DataFrame, spec, ts: float = NOON) -> Path:
    plog = PredictionLog(path)
    plog.append(frame.drop(columns=[spec.target]).to_dict("records"), frame[spec.target].tolist(), spec.model_name, "1", ts=ts)
    plog.close()
    return path


def test_monitor_validates_only_a_sample_of_a_large_window_and_reports_its_true_size(spec, tmp_path, monkeypatch):
    db = write_log(tmp_path / "predictions.db", generate_synthetic(spec, rows=3000, seed=2), spec)
    write_log(db, generate_synthetic(spec, rows=500, seed=3), spec, ts=NOON + 86_400)   # outside the window
    generate_synthetic(spec, rows=1500, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    validated = []
    real = drift.contract_findings
    monkeypatch.setattr(drift, "contract_findings", lambda df, s: validated.append(len(df)) or real(df, s))
    settings = get_settings(mlflow_tracking_uri=f"sqlite:///{tmp_path / 'models' / 'mlflow.db'}", prediction_log=str(db))
    cfg = get_drift_settings(sample_rows=1000, seed=3, min_rows=50)
    result = monitor_sources(settings, spec, cfg, "log", tmp_path / "reference.csv", *DAY)
    current = result.summary["current"]
    assert validated == [1000]
    assert (current["rows"], current["read_rows"], current["sample_size"], current["sampled"]) == (3000, 1000, 1000, True)
    assert "the window holds 3000 logged rows; 1000 drawn at random (seed 3) were read" in " ".join(result.summary["notes"])


def test_a_window_within_sample_rows_is_read_whole(spec, tmp_path):
    db = write_log(tmp_path / "predictions.db", generate_synthetic(spec, rows=300, seed=2), spec)
    sample, total = sample_prediction_log(db, 1000, *DAY, seed=1)
    pd.testing.assert_frame_equal(sample, read_prediction_log(db, *DAY))
    assert total == 300


def test_sampling_parses_only_the_sample_and_its_memory_does_not_grow_with_the_window(spec, tmp_path, monkeypatch):
    db = write_log(tmp_path / "predictions.db", generate_synthetic(spec, rows=20_000, seed=2), spec)
    parsed = []
    real = predictions._frame
    monkeypatch.setattr(predictions, "_frame", lambda rows: parsed.append(len(rows)) or real(rows))

    def peak(read) -> int:
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole = peak(lambda: read_prediction_log(db, *DAY))
    sampled = peak(lambda: sample_prediction_log(db, 1000, *DAY, seed=1, chunk=5000))
    assert parsed == [20_000, 1000]
    assert sampled < whole / 8, (sampled, whole)


def test_the_sample_is_seeded_and_uniform_over_the_window(spec, tmp_path):
    db = tmp_path / "predictions.db"
    plog = PredictionLog(db)
    plog.append([{"i": i} for i in range(10_000)], [0] * 10_000, "m", "1", ts=NOON)
    plog.close()
    a, total = sample_prediction_log(db, 1000, *DAY, seed=11, chunk=700)
    assert total == 10_000 and a["i"].is_unique and a["i"].is_monotonic_increasing
    assert a["i"].tolist() == sample_prediction_log(db, 1000, *DAY, seed=11, chunk=700)[0]["i"].tolist()
    assert a["i"].tolist() != sample_prediction_log(db, 1000, *DAY, seed=12, chunk=700)[0]["i"].tolist()
    per_decile = np.bincount(a["i"] // 1000, minlength=10)   # 100 expected in each tenth of the window
    assert per_decile.min() > 60 and per_decile.max() < 140, per_decile
