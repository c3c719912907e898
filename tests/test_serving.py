"""The serving API on the trained project's champion: every endpoint's exact status and body, the error cases,
metrics, the prediction log, and the request model of both specs (classification and regression)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from conftest import PROJECT_DIR, metric
from fastapi.testclient import TestClient

from nbs_lib.config import load_spec
from nbs_lib.data import generate_synthetic
from nbs_lib.predictions import read_prediction_log
from nbs_lib.serving import example_record

SPEC = load_spec("obesity", PROJECT_DIR)
KEY = "test-serving-key"
FIELDS = ", ".join(SPEC.feature_names)
QUIET_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@pytest.fixture(scope="module")
def served(trained_project, tmp_path_factory):
    """(client, env) of one app on the champion for the whole module; the env stays applied while it runs."""
    from src.serving.app import create_app

    log = tmp_path_factory.mktemp("serving") / "predictions.db"
    env = {**trained_project, **QUIET_MLFLOW, "API_KEY": KEY, "PREDICTION_LOG": str(log)}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with TestClient(create_app()) as client:
            yield client, env


@pytest.fixture
def client(served) -> TestClient:
    return served[0]


@pytest.fixture(scope="module")
def champion(trained_project):
    """The registered version and its sklearn Pipeline, loaded the way MLflow users load it."""
    client = mlflow.MlflowClient(trained_project["MLFLOW_TRACKING_URI"], trained_project["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version_by_alias("obesity", "champion")
    mlflow.set_tracking_uri(trained_project["MLFLOW_TRACKING_URI"])
    pipe = mlflow.sklearn.load_model(f"models:/obesity/{mv.version}")
    mlflow.set_tracking_uri(None)
    return client, mv, pipe


def record(**changes) -> dict:
    return {**example_record(SPEC), **changes}


# ----------------------------------------------------------------------------------------------- endpoints ---

def test_health_answers_ok(client):
    r = client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_ready_names_the_served_model_and_version(client, champion):
    r = client.get("/ready")
    assert (r.status_code, r.json()) == (200, {"status": "ready", "model_name": "obesity", "model_version": str(champion[1].version)})


def test_model_describes_the_served_version_its_metrics_and_lineage(client, champion):
    mlflow_client, mv, _ = champion
    body = client.get("/model").json()
    assert {k: body[k] for k in ("name", "version", "alias", "run_id", "predictor")} == {
        "name": "obesity", "version": str(mv.version), "alias": "champion", "run_id": mv.run_id, "predictor": "compiled"}
    assert body["metrics"] == mlflow_client.get_run(mv.run_id).data.metrics
    assert body["tags"] == {k: v for k, v in mv.tags.items() if k.startswith(("lineage.", "gate."))}
    assert {"lineage.git_commit", "lineage.data_sha256", "lineage.spec_sha256", "gate.decision"} <= set(body["tags"])


def test_predict_returns_the_pipelines_label_and_probabilities_with_the_version(client, champion):
    _, mv, pipe = champion
    import pandas as pd

    rec = record(Weight=95.0, Height=1.62)
    r = client.post("/predict", json=rec)
    assert r.status_code == 200
    body = r.json()
    frame = pd.DataFrame([rec])
    proba = dict(zip(pipe.classes_, pipe.predict_proba(frame)[0], strict=True))
    assert body["prediction"] == pipe.predict(frame)[0]
    assert list(body["probabilities"]) == SPEC.target_levels            # in the spec's level order
    assert body["probabilities"] == pytest.approx({c: proba[c] for c in SPEC.target_levels}, abs=1e-12)
    assert (body["model_name"], body["model_version"]) == ("obesity", str(mv.version))


def test_predict_accepts_json_integers_for_numbers(client):
    assert client.post("/predict", json=record(Age=30, Weight=80)).status_code == 200


@pytest.mark.parametrize("changes, error", [
    ({"Age": 150}, {"type": "less_than_equal", "loc": ["body", "Age"], "msg": "Age must be a number from 10 to 100 (in years); got 150",
                    "input": 150, "ctx": {"le": 100.0}}),
    ({"Height": 0.5}, {"type": "greater_than_equal", "loc": ["body", "Height"],
                       "msg": "Height must be a number from 1.2 to 2.2 (in m); got 0.5", "input": 0.5, "ctx": {"ge": 1.2}}),
    ({"Age": "30"}, {"type": "float_type", "loc": ["body", "Age"], "msg": "Age must be a number from 10 to 100 (in years); got '30'",
                     "input": "30"}),
    ({"MTRANS": "Rocket"}, {"type": "literal_error", "loc": ["body", "MTRANS"],
                            "msg": "MTRANS must be one of 'Automobile', 'Motorbike', 'Bike', 'Public_Transportation', "
                                   "'Walking'; got 'Rocket'", "input": "Rocket",
                            "ctx": {"expected": "'Automobile', 'Motorbike', 'Bike', 'Public_Transportation' or 'Walking'"}}),
    ({"colour": "red"}, {"type": "extra_forbidden", "loc": ["body", "colour"],
                         "msg": f"unknown field 'colour'; the fields are: {FIELDS}", "input": "red"}),
])
def test_predict_rejects_a_bad_field_naming_it_and_what_it_accepts(client, changes, error):
    r = client.post("/predict", json=record(**changes))
    assert (r.status_code, r.json()) == (422, {"detail": [error]})


def test_predict_rejects_a_missing_field_saying_what_it_needs(client):
    rec = record()
    del rec["FAF"]
    r = client.post("/predict", json=rec)
    assert r.status_code == 422
    assert r.json()["detail"] == [{"type": "missing", "loc": ["body", "FAF"], "msg": "FAF is required: a number from 0 to 3",
                                   "input": rec}]


def test_predict_rejects_a_body_that_is_not_json(client):
    r = client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert [(e["type"], e["msg"]) for e in r.json()["detail"]] == [("json_invalid", "JSON decode error")]


def test_body_that_is_not_utf8_is_a_client_error_not_a_crash(client):
    r = client.post("/predict", content=b"\x80", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (400, {"detail": "There was an error parsing the body"})
    r = client.post("/predict/batch", content=b"\x80", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert [(e["type"], e["loc"], e["input"]) for e in r.json()["detail"]] == [("json_invalid", ["body"], "\ufffd")]


def test_batch_keeps_the_records_order_and_equals_single_predictions(client):
    records = generate_synthetic(SPEC, 25, seed=5)[SPEC.feature_names].to_dict("records")
    r = client.post("/predict/batch", json={"records": records})
    assert r.status_code == 200
    body = r.json()
    singles = [client.post("/predict", json=rec).json() for rec in records]
    # Labels are identical; probabilities agree to rounding only. The served model is bit-equal to the registered
    # pipeline for each call, and a linear model's pipeline computes X @ coef with BLAS, whose kernel (and so its
    # summation order) depends on how many rows there are.
    assert [p["prediction"] for p in body["predictions"]] == [s["prediction"] for s in singles]
    for batch_p, single in zip(body["predictions"], singles, strict=True):
        assert batch_p["probabilities"].keys() == single["probabilities"].keys()
        np.testing.assert_allclose(list(batch_p["probabilities"].values()), list(single["probabilities"].values()),
                                   rtol=0, atol=1e-12)
    assert (body["model_name"], body["model_version"]) == (singles[0]["model_name"], singles[0]["model_version"])


def test_empty_batch_returns_no_predictions(client):
    r = client.post("/predict/batch", json={"records": []})
    assert r.status_code == 200
    assert r.json()["predictions"] == []


def test_batch_error_names_the_record_and_the_field(client):
    records = [record(), record(), record(SMOKE="sometimes")]
    r = client.post("/predict/batch", json={"records": records})
    assert (r.status_code, r.json()) == (422, {"detail": [{
        "type": "literal_error", "loc": ["body", "records", 2, "SMOKE"], "msg": "SMOKE must be one of 'no', 'yes'; got 'sometimes'",
        "input": "sometimes", "ctx": {"expected": "'no' or 'yes'"}}]})


@pytest.mark.parametrize("body, error_type", [({"rows": []}, "extra_forbidden"), ({}, "missing"), ([], "dict_type")])
def test_batch_rejects_a_body_without_records(client, body, error_type):
    r = client.post("/predict/batch", json=body)
    assert r.status_code == 422
    assert error_type in [e["type"] for e in r.json()["detail"]]


def test_batch_over_the_limit_is_413_saying_how_to_fix_it(client):
    r = client.post("/predict/batch", json={"records": [record()] * 10_001})
    assert (r.status_code, r.json()) == (413, {"detail": "a batch takes at most 10000 records, this one has 10001; split "
                                                         "it into smaller batches (the server's limit is BATCH_LIMIT)"})


def test_batch_body_larger_than_a_full_batch_needs_is_413_before_it_is_parsed(client):
    body = b'{"records": []}' + b" " * (2048 * 10_000 + 4096)
    r = client.post("/predict/batch", content=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (413, {"detail": f"the body has {len(body):,} bytes, more than the 20,484,096 a "
                                                         "full batch needs; send fewer or shorter records"})


# ------------------------------------------------------------------------------------------ hostile requests ---

@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("literal, shown, got", [("NaN", "NaN", "nan"), ("Infinity", "Infinity", "inf"),
                                                 ("-Infinity", "-Infinity", "-inf"), ("1e999", "Infinity", "inf")])
def test_non_finite_numbers_are_422_naming_the_field_not_a_crash(client, path, literal, shown, got):
    body = {"records": [record(Age=12345)]} if path == "/predict/batch" else record(Age=12345)
    loc = ["body", "records", 0, "Age"] if path == "/predict/batch" else ["body", "Age"]
    r = client.post(path, content=json.dumps(body).replace("12345", literal), headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (422, {"detail": [{
        "type": "finite_number", "loc": loc, "msg": f"Age must be a number from 10 to 100 (in years); got {got}", "input": shown}]})


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("text", [b'"\xff\xfe\xc3("', b'"\\ud800"'], ids=["invalid UTF-8", "lone surrogate"])
def test_text_that_is_not_unicode_is_a_4xx_not_a_crash(client, path, text):
    """Both found by `make bench-robustness`: invalid UTF-8 in a batch crashed msgspec's decoder, and a lone surrogate
    (valid JSON, but no text) made the 422 that echoes it impossible to encode."""
    body = {"records": [record(Gender="GENDER")]} if path == "/predict/batch" else record(Gender="GENDER")
    r = client.post(path, content=json.dumps(body).encode().replace(b'"GENDER"', text),
                    headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["detail"], r.text


def test_a_missing_field_echoes_non_finite_numbers_of_the_record_as_text(client):
    rec = record()
    del rec["FAF"]
    r = client.post("/predict", content=json.dumps(rec).replace("55.0", "NaN"), headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    age, faf = r.json()["detail"]
    assert (age["loc"], age["input"], faf["loc"], faf["input"]["Age"]) == (["body", "Age"], "NaN", ["body", "FAF"], "NaN")


def test_predict_body_over_64_kib_is_413_saying_the_limit(client):
    body = json.dumps(record()).encode() + b" " * 65_536
    r = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (413, {"detail": f"the body has {len(body):,} bytes, more than the 65,536 one "
                                                         "record needs; send one record per call (POST /predict/batch "
                                                         "scores many)"})


def test_chunked_predict_body_is_cut_off_at_64_kib_with_413(client):
    chunks = [json.dumps(record()).encode()] + [b" " * 16_384] * 8
    r = client.post("/predict", content=iter(chunks), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert (r.status_code, r.json()) == (413, {"detail": "the body is larger than the 65,536 bytes one record needs; "
                                                         "send one record per call (POST /predict/batch scores many)"})


def test_chunked_batch_body_is_cut_off_at_the_batch_budget_with_413(client):
    chunks = [b'{"records": []}'] + [b" " * 1_048_576] * 21
    r = client.post("/predict/batch", content=iter(chunks), headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (413, {"detail": "the body is larger than the 20,484,096 bytes a full batch "
                                                         "needs; send fewer or shorter records"})


def test_invalid_batch_lists_the_first_20_errors_and_counts_the_rest(client):
    r = client.post("/predict/batch", json={"records": [record(SMOKE="sometimes")] * 10_000})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail) == 21 and len(r.content) < 10_000
    assert detail[19]["loc"] == ["body", "records", 19, "SMOKE"]
    assert detail[20] == {"type": "too_many_errors", "loc": ["body"],
                          "msg": "9,980 more errors are not listed; fix these and send the body again"}


def test_a_huge_bad_value_is_echoed_as_a_short_prefix(client):
    r = client.post("/predict", json=record(MTRANS="x" * 60_000))
    assert r.status_code == 422 and len(r.content) < 2_000
    [error] = r.json()["detail"]
    assert error["input"] == "x" * 100 + "… (60,000 characters)"
    assert error["msg"].startswith("MTRANS must be one of 'Automobile', 'Motorbike', 'Bike', 'Public_Transportation', "
                                   "'Walking'; got 'xxxx")


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_prediction_bodies_must_be_sent_as_application_json(client, path, content_type):
    body = json.dumps({"records": [record()]} if path == "/predict/batch" else record())
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post(path, content=body, headers=headers)
    assert (r.status_code, r.json()) == (415, {"detail": f"{path} takes a JSON body: send it with Content-Type: "
                                                         f"application/json (got {content_type or 'none'})"})


def test_json_content_type_with_a_charset_is_accepted(client):
    r = client.post("/predict", content=json.dumps(record()), headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200


# ------------------------------------------------------------------------------------------------- reload ----

@pytest.mark.parametrize("headers, status, detail", [
    ({}, 401, "missing X-API-Key header"),
    ({"X-API-Key": "wrong"}, 401, "invalid X-API-Key"),
])
def test_reload_needs_the_right_api_key(client, headers, status, detail):
    r = client.post("/model/reload", headers=headers)
    assert (r.status_code, r.json()) == (status, {"detail": detail})


def test_reload_with_the_key_keeps_the_current_champion_when_unchanged(client, champion):
    v = str(champion[1].version)
    r = client.post("/model/reload", headers={"X-API-Key": KEY})
    assert (r.status_code, r.json()) == (200, {"status": "unchanged", "model_name": "obesity", "model_version": v,
                                              "previous_version": v})


@pytest.mark.parametrize("key", [None, ""])
def test_reload_is_disabled_when_no_key_is_configured(trained_project, monkeypatch, key):
    from src.serving.app import create_app

    for k, v in trained_project.items():
        monkeypatch.setenv(k, v)
    if key is None:
        monkeypatch.delenv("API_KEY", raising=False)
    else:
        monkeypatch.setenv("API_KEY", key)
    client = TestClient(create_app())      # no lifespan: the key check comes before any model work
    r = client.post("/model/reload", headers={"X-API-Key": "change-me-api"})
    assert (r.status_code, r.json()) == (403, {"detail": "POST /model/reload is disabled: no API_KEY is configured on "
                                                         "the server; set API_KEY to enable it"})


HOW_TO_SET_THE_KEY = ("set API_KEY to a random string (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))'), "
                      "or unset it to disable the keyed endpoints. Fix the environment variable or make argument.")


@pytest.mark.parametrize(("key", "reason"), [
    ("change-me-api", "API_KEY is still the .env.example placeholder (change-me...)"),
    ("change-me-but-much-longer-than-16", "API_KEY is still the .env.example placeholder (change-me...)"),
    ("fifteen-chars-k", "API_KEY has 15 characters, fewer than 16"),
])
def test_placeholder_or_short_api_key_is_refused_at_start_with_one_line(monkeypatch, key, reason):
    from nbs_lib.config import UserInputError
    from src.serving.app import create_app

    monkeypatch.setenv("API_KEY", key)
    with pytest.raises(UserInputError) as refused:
        create_app()
    assert str(refused.value) == f"Invalid setting: {reason}: {HOW_TO_SET_THE_KEY}"
    assert key not in str(refused.value)   # the secret itself is never printed
    # the check alone, what the container runs (Dockerfile CMD), and uvicorn itself: exit 2, one line, no traceback
    env = {**os.environ, "API_KEY": key}
    for cmd in ([sys.executable, "-m", "src.serving.settings"], [sys.executable, "-m", "src.serving", "--port", "0"],
                [sys.executable, "-m", "uvicorn", "src.serving.app:app", "--port", "0"]):
        done = subprocess.run(cmd, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stderr.splitlines()[-1:]) == \
            (2, [f"error: Invalid setting: {reason}: {HOW_TO_SET_THE_KEY}"]), done.stderr
        assert "Traceback" not in done.stderr


def test_a_key_of_16_characters_enables_the_keyed_endpoints(monkeypatch):
    from src.serving.settings import serving_context

    monkeypatch.setenv("API_KEY", "k" * 16)
    assert serving_context()[0].serving.reload_key == "k" * 16


# ------------------------------------------------------------------------------------ metrics and the log -----

def test_metrics_count_requests_predictions_per_class_and_the_model_version(client, champion):
    v = str(champion[1].version)
    before = client.get("/metrics").text
    records = generate_synthetic(SPEC, 12, seed=9)[SPEC.feature_names].to_dict("records")
    labels = [client.post("/predict", json=rec).json()["prediction"] for rec in records[:4]]
    labels += [p["prediction"] for p in client.post("/predict/batch", json={"records": records[4:]}).json()["predictions"]]
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    for label in set(labels):
        delta = metric(after, "predictions_total", model_version=v, prediction=label) - \
            metric(before, "predictions_total", model_version=v, prediction=label)
        assert delta == labels.count(label)
    assert metric(after, "http_requests_total", method="POST", path="/predict", status="200") - \
        metric(before, "http_requests_total", method="POST", path="/predict", status="200") == 4
    assert metric(after, "http_request_duration_seconds_count", method="POST", path="/predict/batch") >= 1
    assert metric(after, "model_version", model_name="obesity", alias="champion") == float(v)
    client.get("/no/such/path")
    assert metric(client.get("/metrics").text, "http_requests_total", method="GET", path="unmatched", status="404") >= 1


def test_prediction_log_gets_each_scored_record_with_its_prediction_and_version(served, champion):
    client, env = served
    records = generate_synthetic(SPEC, 7, seed=11)[SPEC.feature_names].to_dict("records")
    single = client.post("/predict", json=records[0]).json()
    batch = client.post("/predict/batch", json={"records": records[1:]}).json()
    assert client.app.state.serving.prediction_log.flush()
    logged = read_prediction_log(env["PREDICTION_LOG"]).tail(7)
    assert logged[SPEC.feature_names].to_dict("records") == records
    assert logged["prediction"].tolist() == [single["prediction"]] + [p["prediction"] for p in batch["predictions"]]
    assert set(logged["model_version"]) == {str(champion[1].version)}
    assert str(logged["timestamp"].dt.tz) == "UTC"


# -------------------------------------------------------------------------------------- settings and specs ----

def test_settings_defaults_follow_the_spec_and_the_project(monkeypatch, tmp_path):
    from src.serving.settings import serving_context

    for k in ("API_KEY", "BATCH_LIMIT", "MODEL_NAME", "MODEL_ALIAS", "MODEL_POLL_SECONDS", "SPEC", "PREDICTION_LOG"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    project, spec = serving_context()
    s = project.serving
    assert (spec.model_name, project.model_alias, s.batch_limit, s.model_poll_seconds, s.api_key, s.reload_key) == \
        ("obesity", "champion", 10_000, 0.0, None, None)
    assert project.prediction_log == tmp_path / "predictions" / "predictions.db"
    monkeypatch.setenv("SPEC", "insurance")
    assert serving_context()[1].model_name == "insurance"
    monkeypatch.setenv("MODEL_NAME", "insurance-v2")   # MODEL_NAME names the registered model; the spec stays the schema
    assert serving_context()[1].model_name == "insurance-v2"


def test_bad_setting_is_a_clear_error(monkeypatch):
    from nbs_lib.config import UserInputError
    from src.serving.settings import serving_context

    monkeypatch.setenv("BATCH_LIMIT", "0")
    with pytest.raises(UserInputError, match="BATCH_LIMIT='0': Input should be greater than or equal to 1"):
        serving_context()


def test_importing_the_app_module_builds_nothing_until_uvicorn_asks_for_app(trained_project, monkeypatch):
    for k, v in trained_project.items():
        monkeypatch.setenv(k, v)
    sys.modules.pop("src.serving.app", None)
    module = importlib.import_module("src.serving.app")
    assert "app" not in vars(module)
    assert module.app.title == "obesity model API"          # what `uvicorn src.serving.app:app` gets


def test_insurance_spec_generates_a_regression_api_without_code_changes(monkeypatch, tmp_path):
    from src.serving.app import create_app

    for k, v in {**QUIET_MLFLOW, "SPEC": "specs/insurance.yaml", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                 "PREDICTION_LOG": str(tmp_path / "p.db"), "STARTUP_WAIT_SECONDS": "0"}.items():
        monkeypatch.setenv(k, v)
    client = TestClient(create_app())                       # no lifespan: the schema needs no model
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    rec = schemas["InsuranceRecord"]
    assert list(rec["properties"]) == ["age", "sex", "bmi", "children", "smoker", "region"]
    assert rec["additionalProperties"] is False and rec["required"] == list(rec["properties"])
    assert (rec["properties"]["bmi"]["minimum"], rec["properties"]["bmi"]["maximum"]) == (12, 60)
    assert rec["properties"]["region"]["enum"] == ["northeast", "northwest", "southeast", "southwest"]
    assert schemas["PredictResponse"]["properties"]["prediction"]["type"] == "number"
    assert "probabilities" not in schemas["PredictResponse"]["properties"]
    r = client.post("/predict", json=example_record(load_spec("insurance", PROJECT_DIR)))
    assert (r.status_code, r.json()) == (503, {"detail": "no model with alias 'champion' in 'insurance'; run make pipeline"})


def test_regression_answers_carry_numbers_and_no_probabilities():
    from nbs_lib.predictor import Prediction
    from nbs_lib.serving import ServedModel
    from src.serving.routes import Answer

    model = ServedModel("insurance", "3", "champion", "run", predictor=None)
    answer = Answer(load_spec("insurance", PROJECT_DIR), None)
    assert json.loads(answer.one(Prediction([12345.5], None), model)) == {
        "prediction": 12345.5, "model_name": "insurance", "model_version": "3"}
    assert json.loads(answer.many(Prediction([1.25, 2.0], None), model)) == {
        "predictions": [{"prediction": 1.25}, {"prediction": 2.0}], "model_name": "insurance", "model_version": "3"}


def test_the_docs_example_is_the_champions_typical_record_not_the_middle_of_every_range(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    (record,) = [s for name, s in schema.items() if name.endswith("Record")]
    served = client.app.state.serving.models.current.example   # logged with the version by the registry notebook
    assert record["examples"] == [served] and set(served) == set(SPEC.feature_names)
    assert served != example_record(SPEC) and 10 < served["Age"] < 55 and served["Gender"] in ("Female", "Male")
    assert client.post("/predict", json=served).status_code == 200


def test_openapi_documents_every_endpoint_and_error(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert sorted(p for p in paths if not p.startswith("/monitoring")) == [
        "/health", "/metrics", "/model", "/model/reload", "/predict", "/predict/batch", "/ready"]
    assert set(paths["/predict"]["post"]["responses"]) == {"200", "400", "413", "415", "422", "503"}
    assert set(paths["/predict/batch"]["post"]["responses"]) == {"200", "413", "415", "422", "503"}
    assert set(paths["/model/reload"]["post"]["responses"]) == {"200", "401", "403", "422", "503"}
    batch = paths["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["records"]["maxItems"] == 10_000
    assert json.dumps(batch["properties"]["records"]["items"]) == '{"$ref": "#/components/schemas/ObesityRecord"}'


# ------------------------------------------- another shape of dataset: gaps, odd column names, integer labels ----

@pytest.fixture(scope="module")
def odd_served(tmp_path_factory):
    """(client, env, pipeline) of an app serving a champion of the odd spec (tests/odd_spec.py)."""
    from odd_spec import register_champion

    from src.serving.app import create_app

    env, pipe = register_champion(tmp_path_factory.mktemp("odd"))
    env = {**env, **QUIET_MLFLOW, "API_KEY": KEY}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with TestClient(create_app()) as client:
            yield client, env, pipe


def odd_record(**changes) -> dict:
    from odd_spec import SPEC as ODD

    return {**example_record(ODD), **changes}


def test_predict_accepts_null_for_nullable_features_and_answers_as_the_pipeline(odd_served):
    from odd_spec import as_frame

    client, _, pipe = odd_served
    rec = odd_record(**{"cap-diameter": None, "2nd_reading": None, "pH.level": 4.5})
    r = client.post("/predict", json=rec)
    assert r.status_code == 200, r.text
    body = r.json()
    frame = as_frame([rec])
    assert body["prediction"] == pipe.predict(frame)[0]
    assert list(body["probabilities"]) == ["3", "4", "5"]
    proba = dict(zip(pipe.classes_, pipe.predict_proba(frame)[0], strict=True))
    assert body["probabilities"] == pytest.approx(proba, abs=1e-12)
    assert (body["model_name"], body["model_version"]) == ("odd", "1")


@pytest.mark.parametrize("field, accepts", [
    ("stem width", "a number from 0 to 10"),
    ("class", "one of '0', '1'"),
])
def test_predict_refuses_null_for_a_feature_that_is_not_nullable_saying_so(odd_served, field, accepts):
    r = odd_served[0].post("/predict", json=odd_record(**{field: None}))
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert (error["loc"], error["msg"], error["input"]) == (
        ["body", field], f"{field} must be {accepts}; got null ({field} is not nullable in the spec)", None)


def test_predict_refuses_a_missing_nullable_field_and_says_to_send_null(odd_served):
    rec = odd_record()
    del rec["cap-diameter"]
    r = odd_served[0].post("/predict", json=rec)
    assert (r.status_code, r.json()) == (422, {"detail": [{
        "type": "missing", "loc": ["body", "cap-diameter"], "input": rec,
        "msg": "cap-diameter is required: a number from 0 to 20 (in cm), or null; send null when the value is unknown"}]})


def test_batch_with_nulls_and_odd_column_names_answers_as_the_pipeline_and_logs_the_nulls(odd_served):
    import pandas as pd
    from odd_spec import as_frame, as_requests, odd_frame

    client, env, pipe = odd_served
    records = as_requests(odd_frame(60, seed=8))
    assert sum(r["cap-diameter"] is None for r in records) > 0 and sum(r["2nd_reading"] is None for r in records) > 0
    r = client.post("/predict/batch", json={"records": records})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    frame = as_frame(records)
    assert [p["prediction"] for p in got] == pipe.predict(frame).tolist()
    proba = pd.DataFrame(pipe.predict_proba(frame), columns=pipe.classes_)[["3", "4", "5"]].to_numpy()
    np.testing.assert_allclose([[p["probabilities"][c] for c in ("3", "4", "5")] for p in got], proba, rtol=0, atol=1e-12)
    assert client.app.state.serving.prediction_log.flush()
    logged = read_prediction_log(env["PREDICTION_LOG"]).tail(60).reset_index(drop=True)
    assert logged["2nd_reading"].tolist() == [r["2nd_reading"] for r in records]
    assert logged["cap-diameter"].isna().tolist() == [r["cap-diameter"] is None for r in records]


def test_batch_refuses_null_for_a_feature_that_is_not_nullable_naming_the_record(odd_served):
    r = odd_served[0].post("/predict/batch", json={"records": [odd_record(), odd_record(**{"stem width": None})]})
    assert (r.status_code, r.json()) == (422, {"detail": [{
        "type": "float_type", "loc": ["body", "records", 1, "stem width"], "input": None,
        "msg": "stem width must be a number from 0 to 10; got null (stem width is not nullable in the spec)"}]})


def test_odd_champion_is_served_compiled_and_equals_its_pipeline_on_records_with_nulls(odd_served):
    from odd_spec import SPEC as ODD

    from nbs_lib.predictor import PipelinePredictor, make_predictor, probe_records, same_predictions

    client, _, pipe = odd_served
    assert client.get("/model").json()["predictor"] == "compiled"
    records = probe_records(ODD, 300, seed=11)
    assert {c for c in ODD.feature_names if any(r[c] is None for r in records)} == set(ODD.nullable_features)
    served = client.app.state.serving.models.current.predictor
    assert same_predictions(served.predict(records), PipelinePredictor(pipe, ODD).predict(records))
    assert make_predictor(pipe, ODD).kind == "compiled"


def test_openapi_documents_odd_names_nullability_description_and_unit(odd_served):
    schema = odd_served[0].get("/openapi.json").json()["components"]["schemas"]["OddRecord"]
    props = schema["properties"]
    assert list(props) == ["cap-diameter", "stem width", "pH.level", "2nd_reading", "class"]
    assert schema["required"] == list(props) and schema["additionalProperties"] is False
    assert props["cap-diameter"] == {
        "anyOf": [{"type": "number", "minimum": 0.0, "maximum": 20.0}, {"type": "null"}], "title": "cap-diameter",
        "description": "Width of the cap: a number from 0 to 20 (in cm), or null"}
    assert props["2nd_reading"]["anyOf"] == [{"type": "string", "enum": ["low", "mid", "high"]}, {"type": "null"}]
    assert props["stem width"]["type"] == "number" and "anyOf" not in props["stem width"]
    assert props["class"]["enum"] == ["0", "1"]


def test_odd_api_answers_what_mlflow_pyfunc_answers_on_records_with_nulls(odd_served):
    """Train/serve skew on the odd spec: the registered model loaded by MLflow (its signature has the odd names, the
    nullable features optional) labels records with nulls as the API does."""
    import pandas as pd
    from odd_spec import SPEC as ODD
    from odd_spec import as_requests, odd_frame

    from nbs_lib.predictor import probe_records

    client, env, _ = odd_served
    probes = [{k: None if v != v else v for k, v in r.items()} for r in probe_records(ODD, 60, seed=3)]   # NaN is not JSON
    records = as_requests(odd_frame(90, seed=12)) + probes
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        labels = mlflow.pyfunc.load_model("models:/odd@champion").predict(pd.DataFrame(records)).tolist()
    finally:
        mlflow.set_tracking_uri(None)
    r = client.post("/predict/batch", json={"records": records})
    assert r.status_code == 200, r.text
    assert [p["prediction"] for p in r.json()["predictions"]] == labels
    assert [client.post("/predict", json=rec).json()["prediction"] for rec in records[:20]] == labels[:20]


def test_the_web_form_is_generated_from_any_spec_with_odd_names_and_gaps(odd_served):
    from html.parser import HTMLParser

    from odd_spec import SPEC as ODD

    client, _, _ = odd_served
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")

    class Inputs(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.fields, self.labels, self.options, self.select = {}, set(), {}, None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag in ("input", "select") and "data-column" in a:
                self.fields[a["data-column"]] = a
                self.select = a["data-column"] if tag == "select" else None
            elif tag == "label":
                self.labels.add(a["for"])
            elif tag == "option" and self.select:
                self.options.setdefault(self.select, []).append(a)

    parsed = Inputs()
    parsed.feed(page.text)
    assert list(parsed.fields) == ODD.feature_names                       # "cap-diameter", "stem width", "pH.level", ...
    assert {f["id"] for f in parsed.fields.values()} <= parsed.labels     # every input has a label
    assert parsed.fields["cap-diameter"]["data-nullable"] == "true" and parsed.fields["cap-diameter"]["max"] == "20.0"
    assert len(parsed.options["2nd_reading"]) == 4                        # "unknown" (null) and the three levels
    assert "Width of the cap" in page.text and "(cm)" in page.text
    attributes = re.findall(r"""\s(?:src|href)=["']?([^"'\s>]+)""", page.text)
    assert attributes and all(v.startswith("/") and not v.startswith("//") for v in attributes)   # nothing from elsewhere
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert client.get(asset).status_code == 200, asset
