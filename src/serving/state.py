"""What the running API holds: the served model (swapped atomically on reload or poll), the prediction log and
the metrics. `ServingState` lives on `app.state.serving`; routers reach it through `src.serving.deps`."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from nbs_lib.champion import NoChampion, RegistryUnreachable, find_champion, no_champion_message
from nbs_lib.config import Settings, Spec
from nbs_lib.predictions import PredictionLog
from nbs_lib.serving import RELOAD, ServedModel, load_served

from .metrics import ServingMetrics
from .settings import ServingSettings

log = logging.getLogger(__name__)

# MLflow's HTTP client retries a dead server for minutes by default; the API must answer 503 long before that.
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                          "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


class ModelHolder:
    """The served model. Requests read `current` once, so a swap never changes a request already running."""

    def __init__(self, settings: ServingSettings, spec: Spec, metrics: ServingMetrics) -> None:
        self.settings, self.spec, self.metrics = settings, spec, metrics
        self.current: ServedModel | None = None
        self.last_error: str = ""
        self._unreachable = ""                  # the registry's own 503 detail while it does not answer
        self._logged = ""                       # the last problem logged by try_refresh
        self._lock = threading.Lock()           # one load at a time (reload, poll and startup may race)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def message(self) -> str:
        """The 503 detail while nothing is served: the registry is down, or it has no champion yet."""
        return self._unreachable or no_champion_message(self.settings.model_name, self.settings.model_alias)

    def refresh(self) -> tuple[str, ServedModel]:
        """Serve the alias's current version: ('loaded', model) after a swap, ('unchanged', model) if already served.

        Raises NoChampion (or the load error) and keeps serving the previous model."""
        s = self.settings
        with self._lock:
            try:
                mv = find_champion(s.mlflow_tracking_uri, s.model_name, s.model_alias)
                self._unreachable = ""
                if self.current is not None and self.current.version == str(mv.version):
                    return "unchanged", self.current
                started = time.perf_counter()
                model = load_served(s.mlflow_tracking_uri, s.model_name, s.model_alias, self.spec, version=mv)
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                if isinstance(e, NoChampion):   # the registry answered (no alias) or did not: the 503 detail says which
                    self._unreachable = f"{e}, {RELOAD}" if isinstance(e, RegistryUnreachable) else ""
                self.metrics.model_loads.labels("no_champion" if isinstance(e, NoChampion) else "error").inc()
                raise
            previous, self.current, self.last_error = self.current, model, ""
        self.metrics.model_loads.labels("loaded").inc()
        self.metrics.model_version.labels(s.model_name, s.model_alias).set(float(model.version))
        log.info("serving %s v%s (%s predictor, was v%s) loaded in %.1f s", model.name, model.version,
                 model.predictor.kind, previous.version if previous else "-", time.perf_counter() - started)
        return "loaded", model

    def try_refresh(self) -> bool:
        """`refresh` that logs instead of raising (each distinct problem once); True when a model is served."""
        try:
            self.refresh()
            self._logged = ""
        except Exception as e:
            cause = e.__cause__
            problem = f"{e}" + (f" ({type(cause).__name__}: {str(cause)[:300]})" if cause is not None else "")
            serving = f"v{self.current.version}" if self.current else "nothing"
            if problem != self._logged:   # a poller asking every few seconds must not flood the log
                self._logged = problem
                if isinstance(e, NoChampion):
                    log.warning("%s; still serving %s", problem, serving)
                else:
                    log.exception("loading %s@%s failed; still serving %s", self.settings.model_name,
                                  self.settings.model_alias, serving)
        return self.current is not None

    def refresh_in_background(self) -> Future:
        """Start `try_refresh` in a daemon thread (a hung registry cannot block shutdown); returns its future."""
        fut: Future = Future()

        def run() -> None:
            try:
                fut.set_result(self.try_refresh())
            except BaseException as e:  # pragma: no cover - try_refresh already catches Exception
                fut.set_exception(e)
        threading.Thread(target=run, name="model-load", daemon=True).start()
        return fut

    def start_polling(self, interval: float) -> None:
        """Look for a new champion every `interval` seconds in a daemon thread, until `stop`."""
        def poll() -> None:
            while not self._stop.wait(interval):
                self.try_refresh()
        self._poller = threading.Thread(target=poll, name="model-poll", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class ServingState:
    """Everything the routes need, built by `create_app` (no I/O) and started by the lifespan."""

    settings: ServingSettings
    project: Settings
    spec: Spec
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    models: ModelHolder = field(init=False)
    prediction_log: PredictionLog | None = None

    def __post_init__(self) -> None:
        self.models = ModelHolder(self.settings, self.spec, self.metrics)

    @property
    def classification(self) -> bool:
        return self.spec.task == "classification"

    def start(self) -> Future:
        """Open the prediction log, start loading the champion and the poller; returns the first load's future."""
        for k, v in MLFLOW_CLIENT_DEFAULTS.items():
            os.environ.setdefault(k, v)
        if self.settings.log_predictions:
            try:
                self.prediction_log = PredictionLog(
                    self.settings.prediction_log, retention_days=self.project.prediction_log_retention_days)
                self.metrics.log_dropped.set_function(lambda: self.prediction_log.dropped)
            except Exception:  # a read-only volume must not keep the API down; the loss is visible in the log
                log.exception("cannot open the prediction log %s; predictions are not logged", self.settings.prediction_log)
        first = self.models.refresh_in_background()
        if self.settings.model_poll_seconds > 0:
            self.models.start_polling(self.settings.model_poll_seconds)
        return first

    def stop(self) -> None:
        """Stop polling and write what the prediction log still holds."""
        self.models.stop()
        if self.prediction_log is not None:
            self.prediction_log.close()

    def record(self, model: ServedModel, records: list[dict], values: list) -> None:
        """Count scored records and append them to the prediction log (a queue put; a thread writes them)."""
        self.metrics.count_predictions(model.version, values, self.classification)
        if self.prediction_log is not None:
            self.prediction_log.append(records, values, model.name, model.version)
