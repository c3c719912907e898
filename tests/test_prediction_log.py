"""The prediction log's writer: one bad row costs only that row, the writer survives (or restarts after) an
unexpected error and counts what it lost, and a retention setting deletes old rows at start and periodically."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from conftest import FailingConnection

from nbs_lib.config import get_settings
from nbs_lib.predictions import PredictionLog, read_prediction_log

DAY = 86_400.0


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT model_name, prediction, record FROM predictions ORDER BY id").fetchall()


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "predictions.db"


def test_a_row_that_cannot_be_serialised_costs_only_that_row(db):
    plog = PredictionLog(db)
    plog.append([{"a": 1}, {"a": object()}, {"a": 3}], [0, 1, 2], "m", "1")
    assert plog.flush(timeout=5)
    plog.close()
    assert (plog.dropped, read_prediction_log(db)["a"].tolist()) == (1, [1, 3])


def test_a_row_sqlite_refuses_costs_only_that_row_of_the_flush(db):
    plog = PredictionLog(db, settle_s=0.5)   # the three appends land in one flush
    plog.append([{"a": 1}], [0], "m", "1")
    plog.append([{"a": 2}], [1], None, "1")   # model_name NOT NULL: SQLite refuses this row
    plog.append([{"a": 3}, {"a": 4}], [0, 1], "m", "1")
    plog.close()
    assert plog.dropped == 1
    assert rows(db) == [("m", "0", '{"a":1}'), ("m", "0", '{"a":3}'), ("m", "1", '{"a":4}')]


def test_the_writer_survives_a_request_whose_predictions_do_not_match_its_records(db):
    plog = PredictionLog(db)
    plog.append([{"a": 1}, {"a": 2}], [0], "m", "1")   # a caller's bug: 2 records, 1 prediction
    assert plog.flush(timeout=5)
    plog.append([{"a": 3}], [1], "m", "1")
    assert plog.flush(timeout=5)
    plog.close()
    assert (plog.dropped, read_prediction_log(db)["a"].tolist()) == (2, [3])


def test_an_unexpected_error_in_the_batch_insert_is_retried_row_by_row_without_loss(db):
    plog = PredictionLog(db, settle_s=0.0)
    plog._conn = FailingConnection(plog._conn, RuntimeError("boom"))
    plog.append([{"a": 1}, {"a": 2}], [0, 1], "m", "1")
    assert plog.flush(timeout=5)
    plog.append([{"a": 3}], [1], "m", "1")
    plog.close()
    assert (plog.dropped, read_prediction_log(db)["a"].tolist()) == (0, [1, 2, 3])


def test_the_writer_restarts_after_it_died_and_counts_the_rows_it_held(db):
    plog = PredictionLog(db, settle_s=0.0)
    plog._conn = FailingConnection(plog._conn, SystemExit())   # ends the thread, as no Exception handler sees it
    plog.append([{"a": 1}, {"a": 2}], [0, 1], "m", "1")
    assert plog.flush(timeout=5)
    plog._thread.join(timeout=5)
    assert (plog._thread.is_alive(), plog.dropped) == (False, 2)
    plog.append([{"a": 3}], [1], "m", "1")
    assert plog.flush(timeout=5)
    plog.close()
    assert (plog.dropped, plog.restarts, read_prediction_log(db)["a"].tolist()) == (2, 1, [3])


def test_retention_deletes_rows_older_than_the_setting_at_start_and_not_on_every_insert(db):
    now = time.time()
    old = PredictionLog(db)
    old.append([{"a": 1}], [0], "m", "1", ts=now - 3 * DAY)
    old.append([{"a": 2}], [0], "m", "1", ts=now - 0.5 * DAY)
    old.close()
    plog = PredictionLog(db, retention_days=1, prune_every_s=3600)
    plog.append([{"a": 3}], [0], "m", "1", ts=now - 5 * DAY)   # after the start's pruning: kept until the next one
    plog.close()
    assert read_prediction_log(db)["a"].tolist() == [2, 3]


def test_retention_prunes_again_after_its_period(db):
    now = time.time()
    plog = PredictionLog(db, retention_days=1, prune_every_s=0.2)
    plog.append([{"a": 1}], [0], "m", "1", ts=now - 3 * DAY)
    plog.append([{"a": 2}], [0], "m", "1", ts=now)
    assert plog.flush(timeout=5)
    deadline = time.monotonic() + 5
    while len(read_prediction_log(db)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    plog.close()
    assert read_prediction_log(db)["a"].tolist() == [2]


def test_retention_zero_keeps_every_row(db):
    plog = PredictionLog(db, retention_days=0, prune_every_s=0.01)
    plog.append([{"a": 1}], [0], "m", "1", ts=1000.0)
    assert plog.flush(timeout=5)
    time.sleep(0.1)
    plog.close()
    assert read_prediction_log(db)["a"].tolist() == [1]


def test_retention_days_setting_defaults_to_90_and_reads_prediction_log_retention_days(monkeypatch, tmp_path):
    monkeypatch.delenv("PREDICTION_LOG_RETENTION_DAYS", raising=False)
    assert get_settings(project_dir=tmp_path).prediction_log_retention_days == 90
    monkeypatch.setenv("PREDICTION_LOG_RETENTION_DAYS", "0")
    assert get_settings(project_dir=tmp_path).prediction_log_retention_days == 0
