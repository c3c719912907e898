"""A registered model cannot run code in the processes that load the champion: a pickled model, or a skops model whose
MLmodel trusts a type that reaches the system, is refused before anything is deserialised (`load_champion`), and the
API keeps serving the version it has and says why on /ready. Also: the prediction log's losses are on /metrics."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import skops.io as sio
import yaml
from conftest import PROJECT_DIR, FailingConnection, isolated_env, metric
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from nbs_lib.champion import UnsafeModel, load_champion
from nbs_lib.config import UserInputError, load_spec
from nbs_lib.data import generate_synthetic
from nbs_lib.processing import DerivedFeatures, clean_frame, make_preprocessor
from nbs_lib.serving import example_record

SPEC = load_spec("obesity", PROJECT_DIR)
KEY = "test-registry-safety-key"
QUIET_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
FIX = "re-register the model with the project's pipeline: make pipeline"


class Payload:
    """Writes `marker` when unpickled: the stand-in for an attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def fitted() -> Pipeline:
    """A small obesity model (the project's first steps and a logistic regression), fitted in a second."""
    train = clean_frame(generate_synthetic(SPEC, 200, seed=1), SPEC)
    pipe = Pipeline([("features", DerivedFeatures(SPEC.derived_features, SPEC.numeric_features)),
                     ("preprocess", make_preprocessor(SPEC)), ("model", LogisticRegression(max_iter=300))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe.fit(train[SPEC.feature_names], train[SPEC.target])


class Store:
    """A throwaway MLflow store under `root` with the registered model 'obesity'."""

    def __init__(self, root: Path) -> None:
        self.env = {**isolated_env(root), **QUIET_MLFLOW, "API_KEY": KEY}
        self.uri = self.env["MLFLOW_TRACKING_URI"]
        Path(self.env["MODELS_DIR"]).mkdir(parents=True)
        self.client = mlflow.MlflowClient(self.uri, self.uri)
        self.experiment = self.client.create_experiment("safety", artifact_location=str(root / "artifacts"))

    def register(self, model, champion: bool = True, **log_args) -> str:
        """Log `model` as the next version of 'obesity' (skops unless `log_args` say otherwise); returns the version."""
        log_args.setdefault("skops_trusted_types", sio.get_untrusted_types(data=sio.dumps(model)))
        before = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        try:
            with mlflow.start_run(experiment_id=self.experiment), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # MLflow warns about pickle formats: the point of these tests
                info = mlflow.sklearn.log_model(model, name="model", registered_model_name="obesity",
                                                pip_requirements=[], **log_args)
        finally:
            mlflow.set_tracking_uri(before)
        version = str(info.registered_model_version)
        if champion:
            self.client.set_registered_model_alias("obesity", "champion", version)
        return version

    def load(self):
        return load_champion(self.uri, "obesity", "champion", SPEC)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path)


def booby_trapped(fitted: Pipeline, marker: Path) -> Pipeline:
    """A copy of the good model that runs code (writes `marker`) when unpickled."""
    model = Pipeline(fitted.steps)
    model.payload = Payload(marker)
    return model


@contextlib.contextmanager
def serving(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[TestClient]:
    """A client of a fresh app on `env`, after its first model load has finished."""
    from src.serving.app import create_app

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with TestClient(create_app()) as client:
        yield client


# ------------------------------------------------------------------------------------------ load_champion ---

def test_a_pickled_champion_is_refused_before_its_code_runs(store, fitted, tmp_path):
    marker = tmp_path / "pwned"
    store.register(booby_trapped(fitted, marker), serialization_format="cloudpickle")
    marker.unlink(missing_ok=True)   # logging pickled the payload; only loading may run it
    with pytest.raises(UnsafeModel) as refused:
        store.load()
    assert str(refused.value) == (
        "models:/obesity/1 was not loaded: it is serialised with cloudpickle, which can run any code when loaded. "
        f"Only skops models trusting sklearn, lightgbm and nbs_lib types are loaded; {FIX}")
    assert isinstance(refused.value, UserInputError) and refused.value.__cause__ is None   # a message, no traceback
    assert not marker.exists()


def test_a_plain_pickle_champion_is_refused(store, fitted):
    store.register(fitted, serialization_format="pickle")
    with pytest.raises(UnsafeModel, match="models:/obesity/1 was not loaded: it is serialised with pickle"):
        store.load()


@pytest.mark.parametrize("dangerous", ["builtins.eval", "posix.system", "subprocess.Popen", "functools.partial",
                                       "nbs_lib.tuning.os"])
def test_a_skops_champion_trusting_a_dangerous_type_is_refused(store, fitted, dangerous):
    trusted = sio.get_untrusted_types(data=sio.dumps(fitted))
    store.register(fitted, skops_trusted_types=[*trusted, dangerous])
    with pytest.raises(UnsafeModel) as refused:
        store.load()
    assert str(refused.value) == (f"models:/obesity/1 was not loaded: its MLmodel trusts types outside the allowlist: "
                                  f"['{dangerous}']. Only skops models trusting sklearn, lightgbm and nbs_lib types "
                                  f"are loaded; {FIX}")


def test_a_skops_file_holding_types_its_mlmodel_does_not_trust_is_refused(store, fitted):
    version = store.register(fitted)
    mlmodel = Path(store.client.get_model_version_download_uri("obesity", version)) / "MLmodel"
    conf = yaml.safe_load(mlmodel.read_text())
    conf["flavors"]["sklearn"]["skops_trusted_types"] = []   # edited in the store: the file holds DerivedFeatures...
    mlmodel.write_text(yaml.safe_dump(conf))
    with pytest.raises(UnsafeModel, match="models:/obesity/1 was not loaded: its model file holds types its MLmodel "
                                          "does not trust"):
        store.load()


def test_a_skops_champion_loads_with_mlflows_pickle_refusal_on(store, fitted, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")   # as the API image and `make serve` run
    store.register(fitted)
    champ = store.load()
    rows = clean_frame(generate_synthetic(SPEC, 20, seed=2), SPEC)[SPEC.feature_names]
    assert (champ.version, champ.model.predict(rows).tolist()) == ("1", fitted.predict(rows).tolist())


# ---------------------------------------------------------------------------------------------------- API ---

def test_the_api_keeps_its_model_when_the_champion_moves_to_a_pickled_one_and_says_why(store, fitted, tmp_path,
                                                                                        monkeypatch):
    marker = tmp_path / "pwned"
    store.register(fitted)
    with serving(monkeypatch, store.env) as client:
        assert client.get("/ready").json() == {"status": "ready", "model_name": "obesity", "model_version": "1"}
        store.register(booby_trapped(fitted, marker), serialization_format="cloudpickle")
        marker.unlink(missing_ok=True)
        refusal = ("models:/obesity/2 was not loaded: it is serialised with cloudpickle, which can run any code when "
                   f"loaded. Only skops models trusting sklearn, lightgbm and nbs_lib types are loaded; {FIX}")
        r = client.post("/model/reload", headers={"X-API-Key": KEY})
        assert (r.status_code, r.json()) == (503, {"detail": f"could not load models:/obesity@champion (UnsafeModel: "
                                                             f"{refusal}); still serving version 1"})
        r = client.get("/ready")
        assert (r.status_code, r.json()) == (200, {"status": "ready", "model_name": "obesity", "model_version": "1",
                                                   "problem": f"UnsafeModel: {refusal}"})
        r = client.post("/predict", json=example_record(SPEC))
        assert (r.status_code, r.json()["model_version"]) == (200, "1")
        assert metric(client.get("/metrics").text, "model_loads_total", outcome="refused") == 1
        store.client.set_registered_model_alias("obesity", "champion", "1")   # moved back: all is well again
        assert client.post("/model/reload", headers={"X-API-Key": KEY}).json()["status"] == "unchanged"
        assert client.get("/ready").json() == {"status": "ready", "model_name": "obesity", "model_version": "1"}
    assert not marker.exists()


def test_an_api_whose_only_champion_is_refused_answers_503_saying_why(store, fitted, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    store.register(booby_trapped(fitted, marker), serialization_format="cloudpickle")
    marker.unlink(missing_ok=True)
    with serving(monkeypatch, store.env) as client:
        r = client.get("/ready")
        assert (r.status_code, r.json()) == (503, {"detail": "models:/obesity/1 was not loaded: it is serialised with "
                                                             "cloudpickle, which can run any code when loaded. Only "
                                                             "skops models trusting sklearn, lightgbm and nbs_lib "
                                                             f"types are loaded; {FIX}"})
    assert not marker.exists()


# --------------------------------------------------------------------------------------- prediction log ---

def test_metrics_show_the_prediction_logs_writer_restarts_and_dropped_rows(store, fitted, monkeypatch):
    store.register(fitted)
    with serving(monkeypatch, store.env) as client:
        text = client.get("/metrics").text
        assert (metric(text, "prediction_log_restarts"), metric(text, "prediction_log_dropped")) == (0, 0)
        plog = client.app.state.serving.prediction_log
        plog._conn = FailingConnection(plog._conn, SystemExit())   # ends the writer thread
        assert client.post("/predict", json=example_record(SPEC)).status_code == 200   # its row dies with the writer
        assert plog.flush(timeout=10)
        deadline = time.monotonic() + 10
        while plog._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post("/predict", json=example_record(SPEC)).status_code == 200   # restarts the writer
        assert plog.flush(timeout=10)
        text = client.get("/metrics").text
        assert (metric(text, "prediction_log_restarts"), metric(text, "prediction_log_dropped")) == (1, 1)
