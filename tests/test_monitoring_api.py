"""The API's monitoring routes on the serving app: GET /monitoring/latest, the HTML reports, and the keyed
POST /monitoring/run over the prediction log, fed by the traffic simulator with injected drift."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from src.monitoring import api as monitoring_api
from src.monitoring import simulate

KEY = "test-monitoring-key"
DRIFT_ARGS = ["--rows", "300", "--rate", "2000", "--batch", "50", "--seed", "3",
              "--shift", "Weight=1,Age=1,FAF=1,TUE=1,CH2O=1", "--mix", "MTRANS=Walking:1"]


@pytest.fixture
def app(project_env, tmp_path, monkeypatch):
    """The serving app on the trained project's champion, with its own reports folder and prediction log."""
    monkeypatch.setenv("REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("PREDICTION_LOG", str(tmp_path / "predictions.db"))
    monkeypatch.setenv("API_KEY", KEY)
    from src.serving.app import create_app

    return create_app()


def test_latest_is_404_until_a_report_exists(app):
    with TestClient(app) as client:
        r = client.get("/monitoring/latest")
    assert r.status_code == 404
    assert r.json() == {"detail": "no monitoring report yet; run `make monitor` or POST /monitoring/run (with X-API-Key)"}


@pytest.mark.parametrize("headers, status, detail", [
    ({}, 401, "missing X-API-Key header"),
    ({"X-API-Key": "wrong"}, 401, "invalid X-API-Key"),
])
def test_monitoring_run_needs_the_api_key(app, headers, status, detail):
    with TestClient(app) as client:
        r = client.post("/monitoring/run", headers=headers)
    assert (r.status_code, r.json()) == (status, {"detail": detail})


def test_monitoring_run_is_disabled_without_a_configured_key(project_env, tmp_path, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.setenv("REPORTS_DIR", str(tmp_path / "reports"))
    from src.serving.app import create_app

    with TestClient(create_app()) as client:
        r = client.post("/monitoring/run", headers={"X-API-Key": KEY})
    assert r.status_code == 403
    assert r.json() == {"detail": "POST /monitoring/run is disabled: no API_KEY is configured on the server; set API_KEY to enable it"}


def test_monitoring_run_without_a_champion_is_503_saying_run_the_pipeline(isolated, monkeypatch):
    monkeypatch.setenv("API_KEY", KEY)
    from src.serving.app import create_app

    with TestClient(create_app()) as client:
        r = client.post("/monitoring/run", headers={"X-API-Key": KEY})
    assert r.status_code == 503
    assert r.json()["detail"] == "no model with alias 'champion' in 'obesity'; run make pipeline"


@pytest.mark.parametrize("body, detail_start", [
    ({"window_hours": 1}, "No predictions were logged between "),
    ({"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "The window is empty: since 2025-01-02T00:00:00+00:00"),
])
def test_monitoring_run_over_an_unusable_window_is_422_saying_what_to_do(app, tmp_path, body, detail_start):
    with TestClient(app) as client:
        r = client.post("/monitoring/run", headers={"X-API-Key": KEY}, json=body)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(detail_start)
    assert not (tmp_path / "reports" / "monitoring" / "latest").exists()


def test_monitoring_run_rejects_unknown_fields(app):
    with TestClient(app) as client:
        r = client.post("/monitoring/run", headers={"X-API-Key": KEY}, json={"window": 3})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "extra_forbidden"


def test_simulated_drifted_traffic_is_flagged_by_monitoring_run_and_served_as_latest(app, tmp_path):
    from nbs_lib.predictions import read_prediction_log

    with TestClient(app) as client:
        assert simulate.main(DRIFT_ARGS, client=client) == 0
        assert app.state.serving.prediction_log.flush()
        logged = read_prediction_log(tmp_path / "predictions.db")
        r = client.post("/monitoring/run", headers={"X-API-Key": KEY}, json={"window_hours": 1})
        latest = client.get("/monitoring/latest")
        html = client.get(r.json()["links"]["data_drift"])
    assert (len(logged), set(logged.MTRANS)) == (300, {"Walking"})
    assert r.status_code == 200
    body = r.json()
    assert body["dataset_drift"] is True
    assert {c["column"] for c in body["drifted_columns"]} >= {"Weight", "Age", "FAF", "TUE", "CH2O", "BMI", "MTRANS"}
    assert (body["current"]["rows"], body["current"]["model_versions"], body["model"]["version"]) == (300, ["1"], "1")
    assert body["prediction_drift"]["column"] == "prediction"
    assert sorted(body["links"]) == ["data_drift", "data_summary"]
    assert body["links"]["data_drift"] == f"http://testserver/monitoring/reports/{body['run']}/data_drift.html"
    assert (latest.status_code, latest.json()) == (200, body)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert (tmp_path / "reports" / "monitoring" / body["run"] / "data_drift.html").read_bytes() == html.content


@pytest.mark.parametrize("path, detail", [
    ("/monitoring/reports/20250101T000000Z/summary.json", "no report 'summary.json' in monitoring run '20250101T000000Z'"),
    ("/monitoring/reports/20250101T000000Z/data_drift.html", "no report 'data_drift.html' in monitoring run '20250101T000000Z'"),
    ("/monitoring/reports/latest/data_drift.html", "no report 'data_drift.html' in monitoring run 'latest'"),
    ("/monitoring/reports/..%2F..%2F/data_drift.html", "Not Found"),   # no route takes a path as the run
])
def test_report_route_serves_only_report_files_of_published_runs(app, path, detail):
    with TestClient(app) as client:
        r = client.get(path)
    assert r.status_code == 404
    assert r.json()["detail"].split(";")[0] == detail


def test_a_second_monitoring_run_while_one_is_running_is_409(app, monkeypatch):
    entered, release = threading.Event(), threading.Event()

    def slow_compute(settings, spec, body):
        entered.set()
        release.wait(10)
        raise monitoring_api.HTTPException(status_code=422, detail="stopped by the test")

    monkeypatch.setattr(monitoring_api, "compute", slow_compute)
    with TestClient(app) as client:
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(r=client.post("/monitoring/run", headers={"X-API-Key": KEY})))
        worker.start()
        assert entered.wait(10)
        second = client.post("/monitoring/run", headers={"X-API-Key": KEY})
        release.set()
        worker.join(10)
    assert (second.status_code, second.json()) == (409, {"detail": "a monitoring run is already in progress; retry when it finishes"})
    assert first["r"].status_code == 422


@pytest.mark.parametrize("body", [b"{not json", b'{"window_hours": -1, "colour": 1}'])
def test_monitoring_run_checks_the_api_key_before_the_body(app, body):
    with TestClient(app) as client:
        r = client.post("/monitoring/run", content=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (401, {"detail": "missing X-API-Key header"})


def test_monitoring_run_with_a_non_finite_window_is_422_naming_the_field(app):
    with TestClient(app) as client:
        r = client.post("/monitoring/run", headers={"X-API-Key": KEY, "Content-Type": "application/json"},
                        content=b'{"window_hours": NaN}')
    assert r.status_code == 422
    assert [(e["loc"], e["input"]) for e in r.json()["detail"]] == [(["body", "window_hours"], "NaN")]


def test_the_api_prediction_log_deletes_rows_older_than_prediction_log_retention_days(project_env, tmp_path, monkeypatch):
    import time

    from nbs_lib.predictions import PredictionLog, read_prediction_log
    from src.serving.app import create_app

    db = tmp_path / "predictions.db"
    old = PredictionLog(db)
    old.append([{"Age": 1.0}, {"Age": 2.0}], ["a", "b"], "obesity", "1", ts=time.time() - 31 * 86_400)
    old.append([{"Age": 3.0}], ["c"], "obesity", "1", ts=time.time() - 29 * 86_400)
    old.close()
    monkeypatch.setenv("PREDICTION_LOG", str(db))
    monkeypatch.setenv("PREDICTION_LOG_RETENTION_DAYS", "30")
    app = create_app()
    with TestClient(app):
        assert app.state.serving.prediction_log.flush()
    assert read_prediction_log(db)["Age"].tolist() == [3.0]
