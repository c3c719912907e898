"""An Optuna worker: adds trials to the shared study until it holds `--target-trials` finished trials.

Many workers (processes, containers, machines) run this against one study in one RDB storage (OPTUNA_STORAGE, e.g.
postgresql://...) and the same OPTUNA_STUDY name; the pipeline's registry notebook then takes the study's best
trial. `docker-compose up --scale tuner=3` runs three of them. Each worker logs its trials as nested MLflow runs
under a run of its own.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import tempfile
from pathlib import Path

from src.signals import sigterm_as_interrupt

log = logging.getLogger("tune")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-trials", type=int, default=None,
                        help="stop when the study has this many finished (complete or pruned) trials (default: the profile's n_trials)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log trials to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")

    import mlflow
    import optuna

    from nbs_lib.config import (
        UserInputError,
        check_mlflow_store,
        check_optuna_storage,
        configure_mlflow,
        get_settings,
        load_spec,
    )
    from nbs_lib.processing import features_target, prepare_split
    from nbs_lib.tuning import (
        data_fingerprint,
        make_objective,
        open_study,
        retry_trial,
        study_name,
        study_summary,
    )

    try:
        settings = get_settings()
        spec = load_spec(settings.spec, settings.project_dir)
        check_optuna_storage(settings)
        if not args.no_mlflow:
            check_mlflow_store(settings)
        profile = settings.run_profile
        target = args.target_trials or profile.n_trials
        train, _ = prepare_split(settings, spec, Path(tempfile.mkdtemp(prefix="tuner-")))
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    X, y = features_target(train, spec)
    study = open_study(settings, spec, study_name(settings, spec, data_fingerprint(settings.data, spec)))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    stop_at_target = optuna.study.MaxTrialsCallback(target, states=finished)
    done = sum(t.state in finished for t in study.trials)
    log.info("worker %s joins study %s (%d finished trials, target %d)", socket.gethostname(), study.study_name, done, target)
    if done >= target:
        return 0
    objective = make_objective(X, y, spec, profile, settings.seed, log_mlflow=not args.no_mlflow,
                               n_jobs=settings.n_jobs or None)
    running: list[int] = []  # the number of the trial in progress, for the interrupt

    def tracked(trial: optuna.Trial) -> float:
        running[:] = [trial.number]
        return objective(trial)

    def optimize() -> None:
        study.optimize(tracked, callbacks=[stop_at_target], timeout=profile.timeout_s, gc_after_trial=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with sigterm_as_interrupt() as stop:
            if args.no_mlflow:
                optimize()
            else:
                exp_id = configure_mlflow(settings, spec)
                with mlflow.start_run(experiment_id=exp_id, run_name=f"tuner-{socket.gethostname()}",
                                      tags={"optuna.study": study.study_name}):
                    try:
                        optimize()
                    except KeyboardInterrupt:
                        mlflow.end_run("KILLED")
                        raise
    except KeyboardInterrupt:
        stopped = running[0] if running else None
        again = retry_trial(study, stopped) if stopped is not None else None
        done = sum(t.state in finished for t in study.get_trials(deepcopy=False))
        print(f"\n{stop.name}: {interrupted_message(study.study_name, done, stopped, again)}\n", file=sys.stderr)
        return stop.exit_code
    summary = study_summary(study, spec)
    log.info("study %s: %s, best %s", study.study_name, summary["trials"], summary[f"best_cv_{spec.primary_metric}"])
    return 0


def interrupted_message(study: str, finished: int, stopped_trial: int | None, queued_as: int | None) -> str:
    """What stopping a worker left: Optuna failed the trial it was in, and its configuration is queued once more."""
    if stopped_trial is None:
        what = "the worker stopped before its first trial"
    elif queued_as is not None:
        what = f"trial {stopped_trial} was stopped and its configuration queued again as trial {queued_as}"
    else:
        what = f"the worker stopped after trial {stopped_trial}"
    return f"{what}; study {study} keeps its {finished} finished trials. Start a worker again to continue the study."


if __name__ == "__main__":
    sys.exit(main())
