"""The API and the registry: it starts without a champion (or without MLflow) and answers 503 with what to do, picks
a champion up on reload or by polling, and swaps versions under load without losing a request."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
from conftest import PROJECT_DIR
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from nbs_lib.config import load_spec
from nbs_lib.serving import example_record

SPEC = load_spec("obesity", PROJECT_DIR)
KEY = "test-registry-key"
NO_CHAMPION = {"detail": "no model with alias 'champion' in 'obesity'; run make pipeline"}
QUIET_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@contextlib.contextmanager
def serving(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[TestClient]:
    """A client of a fresh app built (and run) with `env` applied."""
    from src.serving.app import create_app

    for k, v in {**QUIET_MLFLOW, "API_KEY": KEY, **env}.items():
        monkeypatch.setenv(k, v)
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def store(trained_project, tmp_path) -> dict[str, str]:
    """A copy of the trained project's registry (its artifacts stay where they are), free to change."""
    db = Path(trained_project["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    shutil.copy(db, tmp_path / "mlflow.db")
    return {**trained_project, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "PREDICTION_LOG": str(tmp_path / "predictions.db")}


def registry(env: dict[str, str]) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])


def test_without_a_champion_the_api_starts_and_answers_503_saying_what_to_do(isolated, monkeypatch):
    with serving(monkeypatch, isolated) as client:
        assert (client.get("/health").status_code, client.get("/health").json()) == (200, {"status": "ok"})
        for method, path, body in [("GET", "/ready", None), ("GET", "/model", None), ("POST", "/predict", example_record(SPEC)),
                                   ("POST", "/predict/batch", {"records": [example_record(SPEC)]})]:
            r = client.request(method, path, json=body)
            assert (path, r.status_code, r.json()) == (path, 503, NO_CHAMPION)
        r = client.post("/model/reload", headers={"X-API-Key": KEY})
        assert (r.status_code, r.json()) == (503, NO_CHAMPION)
        metrics = client.get("/metrics").text
        assert 'model_loads_total{outcome="no_champion"}' in metrics and "model_version{" not in metrics


def test_with_mlflow_unreachable_the_api_starts_fast_and_answers_503(isolated, monkeypatch):
    started = time.perf_counter()
    with serving(monkeypatch, {**isolated, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}) as client:  # nothing on :9
        assert time.perf_counter() - started < 15
        assert client.get("/health").status_code == 200
        unreachable = {"detail": "the MLflow registry at http://127.0.0.1:9 did not answer (MlflowException), so the model "
                                 "with alias 'champion' in 'obesity' could not be looked up; start MLflow or fix "
                                 "MLFLOW_TRACKING_URI, then POST /model/reload"}
        r = client.get("/ready")
        assert (r.status_code, r.json()) == (503, unreachable)
        r = client.post("/predict", json=example_record(SPEC))
        assert (r.status_code, r.json()) == (503, unreachable)


def test_reload_picks_up_a_champion_registered_after_startup(store, monkeypatch):
    reg = registry(store)
    version = reg.get_model_version_by_alias("obesity", "champion").version
    reg.delete_registered_model_alias("obesity", "champion")
    with serving(monkeypatch, store) as client:
        assert client.post("/predict", json=example_record(SPEC)).status_code == 503
        reg.set_registered_model_alias("obesity", "champion", version)
        r = client.post("/model/reload", headers={"X-API-Key": KEY})
        assert (r.status_code, r.json()) == (200, {"status": "reloaded", "model_name": "obesity",
                                                  "model_version": str(version), "previous_version": None})
        r = client.post("/predict", json=example_record(SPEC))
        assert (r.status_code, r.json()["model_version"]) == (200, str(version))


def test_polling_picks_up_a_new_champion_by_itself(store, monkeypatch):
    reg = registry(store)
    version = reg.get_model_version_by_alias("obesity", "champion").version
    reg.delete_registered_model_alias("obesity", "champion")
    with serving(monkeypatch, {**store, "MODEL_POLL_SECONDS": "0.2"}) as client:
        assert client.get("/ready").status_code == 503
        reg.set_registered_model_alias("obesity", "champion", version)
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/ready").json() == {"status": "ready", "model_name": "obesity", "model_version": str(version)}


def test_reload_under_concurrent_requests_swaps_versions_and_loses_none(store, monkeypatch):
    reg = registry(store)
    old = reg.get_model_version_by_alias("obesity", "champion")
    source = reg.get_model_version_download_uri("obesity", old.version)
    new = reg.create_model_version("obesity", source=source, run_id=old.run_id)   # the same model as the next version
    records = [example_record(SPEC), {**example_record(SPEC), "Weight": 120.0}]
    with serving(monkeypatch, store) as client:
        results: list[tuple[int, str]] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def hammer(i: int) -> None:
            while not stop.is_set():
                try:
                    r = client.post("/predict", json=records[i % 2])
                    results.append((r.status_code, r.json().get("model_version")))
                except BaseException as e:  # noqa: BLE001 - any failure is a lost request
                    failures.append(e)

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        reg.set_registered_model_alias("obesity", "champion", new.version)
        r = client.post("/model/reload", headers={"X-API-Key": KEY})
        sent_before_swap_done = len(results)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
    assert (r.status_code, r.json()) == (200, {"status": "reloaded", "model_name": "obesity",
                                              "model_version": str(new.version), "previous_version": str(old.version)})
    assert failures == []
    assert {status for status, _ in results} == {200}
    assert {v for _, v in results} == {str(old.version), str(new.version)}
    assert {v for _, v in results[sent_before_swap_done + 4:]} == {str(new.version)}   # after the swap: only the new one


# --------------------------------------------------------------------------------- several worker processes ---

def counter_total(text: str, name: str, **labels: str) -> float:
    """A counter summed over the samples with these labels (every worker's, in multiprocess mode)."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == f"{name}_total" and labels.items() <= sample.labels.items())


@pytest.fixture
def three_workers(store, tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    """`python -m src.serving --workers 3` (what the image runs) over the store, started as `make bench-robustness`
    starts it; yields its URL and the store once every worker has loaded the champion."""
    from src.bench.robustness import api_server, wait_all_ready

    server = api_server(store, tmp_path, workers=3).start()
    try:
        wait_all_ready(f"http://127.0.0.1:{server.port}")
        yield f"http://127.0.0.1:{server.port}", store
    finally:
        server.stop()


def test_a_reload_sent_to_one_worker_reaches_every_worker_and_metrics_count_them_all(three_workers):
    url, store = three_workers
    reg = registry(store)
    old = reg.get_model_version_by_alias("obesity", "champion")
    new = reg.create_model_version("obesity", source=reg.get_model_version_download_uri("obesity", old.version),
                                   run_id=old.run_id)
    health_before = counter_total(httpx.get(f"{url}/metrics").text, "http_requests", path="/health")
    for _ in range(60):
        assert httpx.get(f"{url}/health").status_code == 200
    # every worker's requests are counted, whichever worker answers the scrape (else about a third of them)
    assert counter_total(httpx.get(f"{url}/metrics").text, "http_requests", path="/health") - health_before == 60

    reg.set_registered_model_alias("obesity", "champion", new.version)   # no polling: only the reload tells the API
    from src.bench.robustness import KEY as SERVER_KEY  # the key three_workers' server was started with

    r = httpx.post(f"{url}/model/reload", headers={"X-API-Key": SERVER_KEY})
    assert (r.status_code, r.json()["model_version"]) == (200, str(new.version))
    sent, deadline, new_in_a_row = time.monotonic(), time.monotonic() + 60, 0
    while new_in_a_row < 30 and time.monotonic() < deadline:
        served = httpx.get(f"{url}/model").json()["version"]
        new_in_a_row = new_in_a_row + 1 if served == str(new.version) else 0
    print(f"every worker served v{new.version} {time.monotonic() - sent:.1f} s after the reload")
    assert new_in_a_row == 30, "some worker still serves the old version a minute after the reload"
    metrics = httpx.get(f"{url}/metrics").text
    assert counter_total(metrics, "model_loads", outcome="loaded") == 6   # three workers, two versions each
