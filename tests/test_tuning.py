"""The shared Optuna study survives a worker that dies mid-trial (killed container, lost machine).

Workers beat a heartbeat into the study's storage while a trial runs; the next trial any worker starts fails a trial
whose heartbeat stopped and queues its configuration once more. Without that, a killed worker's trial stays RUNNING
forever and its configuration is never scored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta

import optuna
import pytest
from conftest import PROJECT_DIR

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the heartbeat API, since Optuna 2.9

# A worker that opens the project's study and starts a real configuration, then hangs inside the trial until killed.
HANGING_WORKER = textwrap.dedent("""
    import time
    from nbs_lib.config import get_settings, load_spec
    from nbs_lib.tuning import open_study, suggest_config
    settings = get_settings()
    spec = load_spec(settings.spec, settings.project_dir)
    study = open_study(settings, spec, "shared")

    def objective(trial):
        suggest_config(trial, spec, settings.run_profile)
        print("in trial", trial.number, flush=True)
        time.sleep(600)

    study.optimize(objective, n_trials=1)
""")


def heartbeats(storage_url: str) -> int:
    """Heartbeat rows in an Optuna RDB storage (0 before its tables exist)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM trial_heartbeats")).scalar_one()
    except sqlalchemy.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def test_a_killed_workers_trial_is_failed_and_its_configuration_retried(tmp_path):
    from nbs_lib.config import get_settings, load_spec
    from nbs_lib.data import generate_synthetic
    from nbs_lib.processing import clean_frame, features_target
    from nbs_lib.tuning import open_study, run_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "OPTUNA_STORAGE": storage, "OPTUNA_HEARTBEAT_S": "1", "MODELS_DIR": str(tmp_path),
           "SPEC": "specs/obesity.yaml", "PROFILE": "smoke"}
    worker = subprocess.Popen([sys.executable, "-c", HANGING_WORKER], cwd=PROJECT_DIR, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    settings = get_settings(optuna_storage=storage, optuna_heartbeat_s=1, models_dir=tmp_path)
    spec = load_spec(settings.spec, settings.project_dir)
    try:
        def beating() -> bool:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited before its trial began:\n{worker.stderr.read()[-3000:]}")
            return (tmp_path / "optuna.db").exists() and heartbeats(storage) > 0
        wait_for(beating, 120, "the worker's trial to record a heartbeat")
        study = open_study(settings, spec, "shared")
        assert study._storage._get_stale_trial_ids(study._study_id) == []  # alive: not stale, however long it runs
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    (hung,) = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]

    time.sleep(3 * settings.optuna_heartbeat_s + 1)  # three missed beats
    X, y = features_target(clean_frame(generate_synthetic(spec, rows=400), spec), spec)
    queued = sum(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials())  # the other warm starts
    survivor = settings.run_profile.model_copy(update={"n_trials": queued + 1, "cv_folds": 2})  # the worker's profile
    run_study(study, X, y, spec, survivor, log_mlflow=False)  # the first trial fails the stale one and queues it again

    trials = study.get_trials()
    assert trials[hung.number].state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == hung.number]
    assert retry.state == optuna.trial.TrialState.COMPLETE  # after the queue's earlier entries
    assert retry.params == hung.params
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_live_slow_trial_is_not_failed_by_other_workers(tmp_path):
    """The heartbeat runs in its own thread, so a trial busy in a long fit keeps beating and keeps its RUNNING state."""
    from nbs_lib.config import get_settings, load_spec
    from nbs_lib.tuning import open_study

    settings = get_settings(optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}", optuna_heartbeat_s=1, models_dir=tmp_path)
    spec = load_spec(settings.spec, settings.project_dir)
    study = open_study(settings, spec, "shared")
    other_worker = open_study(settings, spec, "shared")
    seen_stale: list[list[int]] = []

    def slow_objective(trial):
        for _ in range(5):  # 5 s busy: longer than the 3 s grace period
            time.sleep(1)
            optuna.storages.fail_stale_trials(other_worker)
            seen_stale.append(other_worker._storage._get_stale_trial_ids(other_worker._study_id))
        return 0.5

    study.optimize(slow_objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert seen_stale == [[]] * 5


def running_trial(storage_url: str, started_s_ago: float) -> int | None:
    """The number of a trial RUNNING for at least `started_s_ago` seconds (None before the tables exist)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT number FROM trials WHERE state = 'RUNNING' AND datetime_start < :t"),
                {"t": datetime.now() - timedelta(seconds=started_s_ago)}).all()
    except sqlalchemy.exc.OperationalError:
        return None
    finally:
        engine.dispose()
    return rows[0][0] if rows else None


def test_sigterm_stops_a_tuner_at_once_and_queues_its_trial_again(tmp_path):
    """`docker stop` (SIGTERM to the worker) ends the trial in progress at once: Optuna fails it, the worker queues
    its configuration for the next worker, marks its MLflow run KILLED and exits 143, instead of dying and leaving
    the trial to the heartbeat (or, as PID 1 in a container, ignoring SIGTERM until Docker's SIGKILL)."""
    import mlflow
    from conftest import isolated_env

    env = {**os.environ, **isolated_env(tmp_path), "PROFILE": "full", "N_JOBS": "1"}  # full: trials of seconds
    storage = env["OPTUNA_STORAGE"]
    worker = subprocess.Popen([sys.executable, "-m", "src.tune", "--target-trials", "100"], cwd=PROJECT_DIR, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def in_a_trial() -> int | None:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited before its trial began:\n{worker.stderr.read()[-3000:]}")
            return running_trial(storage, started_s_ago=0.5)
        number = wait_for(in_a_trial, 180, "the worker to be inside a trial")
        worker.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 143, err[-3000:]
    assert time.monotonic() - sent < 20
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    trials = study.get_trials()
    (again,) = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert f"SIGTERM: trial {number} was stopped and its configuration queued again as trial {again.number}" in err
    assert (trials[number].state, again.state) == (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING)
    assert again.params == trials[number].params
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (worker_run,) = client.search_runs([client.get_experiment_by_name("obesity").experiment_id],
                                       filter_string="tags.mlflow.parentRunId IS NULL")
    assert worker_run.info.status == "KILLED"
