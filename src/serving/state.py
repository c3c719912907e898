"""What the running API holds: the served model (swapped atomically on reload or poll), the prediction log and
the metrics. `ServingState` lives on `app.state.serving`; routers reach it through `src.serving.deps`."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from nbs_lib.champion import NoChampion, RegistryUnreachable, UnsafeModel, find_champion, no_champion_message
from nbs_lib.config import ServingSettings, Settings, Spec
from nbs_lib.predictions import PredictionLog
from nbs_lib.serving import RELOAD, ServedModel, load_served

from .metrics import ServingMetrics

log = logging.getLogger(__name__)

RELOAD_SIGNAL = "model-reload"   # in the workers' shared folder (PROMETHEUS_MULTIPROC_DIR): rewritten on POST /model/reload
WATCH_SECONDS = 1.0              # how often each worker looks at it

# MLflow's HTTP client retries a dead server for minutes by default; the API must answer 503 long before that.
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                          "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


class ModelHolder:
    """The served model. Requests read `current` once, so a swap never changes a request already running."""

    def __init__(self, project: Settings, spec: Spec, metrics: ServingMetrics) -> None:
        self.project, self.spec, self.metrics = project, spec, metrics   # spec.model_name: the model served
        self.current: ServedModel | None = None
        self.last_error: str = ""
        self._unreachable = ""                  # the registry's own 503 detail while it does not answer
        self._refused = ""                      # why the champion was not loaded (UnsafeModel) while nothing is served
        self._logged = ""                       # the last problem logged by try_refresh
        self._lock = threading.Lock()           # one load at a time (reload, poll and startup may race)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._watcher: threading.Thread | None = None

    @property
    def message(self) -> str:
        """The 503 detail while nothing is served: the registry is down, it has no champion yet, or it was refused."""
        return self._unreachable or self._refused or no_champion_message(self.spec.model_name, self.project.model_alias)

    def refresh(self) -> tuple[str, ServedModel]:
        """Serve the alias's current version: ('loaded', model) after a swap, ('unchanged', model) if already served.

        Raises NoChampion (or the load error) and keeps serving the previous model."""
        uri, name, alias = self.project.mlflow_tracking_uri, self.spec.model_name, self.project.model_alias
        with self._lock:
            try:
                mv = find_champion(uri, name, alias)
                self._unreachable = ""
                if self.current is not None and self.current.version == str(mv.version):
                    self.last_error = ""          # e.g. the alias moved back from a refused version
                    return "unchanged", self.current
                started = time.perf_counter()
                model = load_served(uri, name, alias, self.spec, version=mv)
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                self._refused = f"{e}" if isinstance(e, UnsafeModel) else ""
                if isinstance(e, NoChampion):   # the registry answered (no alias) or did not: the 503 detail says which
                    self._unreachable = f"{e}, {RELOAD}" if isinstance(e, RegistryUnreachable) else ""
                outcome = "no_champion" if isinstance(e, NoChampion) else "refused" if isinstance(e, UnsafeModel) else "error"
                self.metrics.model_loads.labels(outcome).inc()
                raise
            previous, self.current, self.last_error = self.current, model, ""
        self.metrics.model_loads.labels("loaded").inc()
        self.metrics.model_version.labels(name, alias).set(float(model.version))
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
                if isinstance(e, (NoChampion, UnsafeModel)):   # said in full by the message: no traceback
                    log.warning("%s; still serving %s", problem, serving)
                else:
                    log.exception("loading %s@%s failed; still serving %s", self.spec.model_name,
                                  self.project.model_alias, serving)
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

    def announce(self, signal: Path | None) -> None:
        """Tell the other workers to look for a new champion (after a POST /model/reload): rewrite the shared signal
        file, whose change each worker's watcher notices. No-op for a single worker (no shared folder)."""
        if signal is None:
            return
        fresh = signal.with_name(f"{signal.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            fresh.write_text(f"{self.current.version if self.current else ''} {time.time()}\n")
            os.replace(fresh, signal)   # a new file (inode) each time: a watcher sees the old one or the new one
        except OSError as e:   # this worker has reloaded; the others then follow only by polling
            log.warning("could not tell the other workers of the reload through %s (%s); they keep their version "
                        "until MODEL_POLL_SECONDS or their own reload", signal, e)

    def watch(self, signal: Path, interval: float = WATCH_SECONDS, every_tick: Callable[[], None] = lambda: None) -> None:
        """Check `signal` every `interval` seconds in a daemon thread, until `stop`; when another worker rewrote it,
        look for a new champion. A `stat` a second costs nothing, so a reload reaches every worker within about
        `interval` plus one model load. `every_tick` runs on each check (the worker's share of the metrics)."""
        def seen() -> tuple[int, int]:
            with contextlib.suppress(OSError):
                st = signal.stat()
                return st.st_ino, st.st_mtime_ns   # the inode too: a coarse clock may repeat a modification time
            return 0, 0

        def loop() -> None:
            last = seen()
            while not self._stop.wait(interval):
                every_tick()
                if (now := seen()) != last:
                    last = now
                    self.try_refresh()
        self._watcher = threading.Thread(target=loop, name="model-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class ServingState:
    """Everything the routes need, built by `create_app` (no I/O) and started by the lifespan."""

    project: Settings                  # the one settings object; the API's own knobs are its `serving` section
    spec: Spec                         # with the served model's name (MODEL_NAME, else the spec's)
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    models: ModelHolder = field(init=False)
    prediction_log: PredictionLog | None = None

    def __post_init__(self) -> None:
        self.models = ModelHolder(self.project, self.spec, self.metrics)

    @property
    def settings(self) -> ServingSettings:
        return self.project.serving

    @property
    def classification(self) -> bool:
        return self.spec.task == "classification"

    @property
    def reload_signal(self) -> Path | None:
        """The file a reload rewrites for the other workers: in PROMETHEUS_MULTIPROC_DIR, which `python -m src.serving`
        sets up for several workers; None for a single process."""
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return Path(shared) / RELOAD_SIGNAL if shared else None

    def sync_metrics(self) -> None:
        """Copy the prediction log's counts into the gauges. Set, not computed at scrape time, because in multiprocess
        mode the scrape reads every worker's last written values, and a worker only writes its own."""
        if self.prediction_log is not None:
            self.metrics.log_dropped.set(self.prediction_log.dropped)
            self.metrics.log_restarts.set(self.prediction_log.restarts)

    def start(self) -> Future:
        """Open the prediction log, start loading the champion and the poller; returns the first load's future."""
        for k, v in MLFLOW_CLIENT_DEFAULTS.items():
            os.environ.setdefault(k, v)
        if self.settings.log_predictions:
            try:
                self.prediction_log = PredictionLog(
                    self.project.prediction_log, retention_days=self.project.prediction_log_retention_days)
            except Exception:  # a read-only volume must not keep the API down; the loss is visible in the log
                log.exception("cannot open the prediction log %s; predictions are not logged", self.project.prediction_log)
        first = self.models.refresh_in_background()
        if self.settings.model_poll_seconds > 0:
            self.models.start_polling(self.settings.model_poll_seconds)
        if self.reload_signal is not None:   # several workers: hear of a reload sent to another, add metrics up
            self.models.watch(self.reload_signal, every_tick=self.sync_metrics)
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
