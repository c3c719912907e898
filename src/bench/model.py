"""`make bench-model`: what the search adds. 5-fold CV of the champion's pipeline against LightGBM's defaults.

The search scores configurations by k-fold CV on the training split (the holdout stays unseen for the gate). This
benchmark re-scores the registered champion (cloned, so refit on every fold) with one protocol for every model:
stratified 5-fold CV over all labelled rows of DATA, repeated with 3 different shuffles by default (REPEATS=; which
rows share a fold moves a 5-fold mean by about 0.003 on obesity_train.csv), the same folds for each model. The
baselines are LightGBM with its library defaults, once in a plain sklearn Pipeline (one-hot encoding, nothing
derived) and once in the project's pipeline (with the spec's derived features). Prints each model's mean per repeat,
overall mean, and its gain over the plain defaults with a 95% interval: the folds' paired differences under Nadeau
and Bengio's corrected resampled t-test, since folds that share training rows make the plain standard error far too
small.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def plain_lightgbm_pipeline(spec):
    """LightGBM's defaults behind the least preprocessing that runs: one-hot categoricals, numeric columns as they are."""
    import lightgbm as lgb
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), spec.categorical_features)],
                               remainder="passthrough")
    model = (lgb.LGBMClassifier if spec.task == "classification" else lgb.LGBMRegressor)(random_state=42, verbosity=-1)
    return Pipeline([("encode", encode), ("model", model)])


def fold_scores(model, X, y, spec, folds: int, repeats: int, seed: int) -> list[float]:
    """Primary-metric score of a fresh clone of `model` on each fold, repeat after repeat."""
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold, cross_val_score

    from nbs_lib.tuning import score

    splitter = (RepeatedStratifiedKFold if spec.task == "classification" else RepeatedKFold)(
        n_splits=folds, n_repeats=repeats, random_state=seed)
    scorer = make_scorer(lambda a, b: score(spec.primary_metric, a, b), greater_is_better=True)  # raw values, any direction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(cross_val_score(model, X, y, cv=splitter, scoring=scorer))


def paired_gain(scores: list[float], base: list[float], folds: int, greater_is_better: bool = True,
                level: float = 0.95) -> tuple[float, float, float]:
    """Mean gain of `scores` over `base` (fold by fold, same folds; positive is better) and its `level` interval by
    the corrected resampled t-test (Nadeau & Bengio 2003): the variance of the mean difference is scaled by
    1/J + n_test/n_train (1/(folds-1) for k-fold) instead of 1/J, because the J fits overlap in their training rows."""
    from scipy import stats

    diff = (np.asarray(scores, float) - np.asarray(base, float)) * (1 if greater_is_better else -1)
    n = len(diff)
    mean = float(diff.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.sqrt((1 / n + 1 / (folds - 1)) * diff.var(ddof=1)))
    return mean, mean - half, mean + half


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3,
                        help="k-fold CV this many times, each with other folds (more repeats: a narrower interval)")
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from nbs_lib.champion import champion_version, load_champion
    from nbs_lib.config import UserInputError, configure_mlflow, get_settings, load_spec
    from nbs_lib.data import load_raw_frame, write_synthetic_csv
    from nbs_lib.processing import clean_frame, features_target
    from nbs_lib.tuning import default_config, make_model_pipeline

    try:
        settings = get_settings()
        spec = load_spec(settings.spec, settings.project_dir)
        data = settings.data or str(write_synthetic_csv(spec, Path(tempfile.mkdtemp(prefix="bench-model-"))))
        X, y = features_target(clean_frame(load_raw_frame(data, spec), spec), spec)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_mlflow(settings, spec)
    champ = champion_version(MlflowClient(), spec.model_name, settings.model_alias)
    if champ is None:
        print(f"error: no model with alias '{settings.model_alias}' in '{spec.model_name}' at {settings.mlflow_tracking_uri}; "
              "run `make pipeline` (with the same DATA, PROFILE and store) first.", file=sys.stderr)
        return 2
    run = MlflowClient().get_run(champ.run_id)
    models = {
        "LightGBM defaults, plain Pipeline": plain_lightgbm_pipeline(spec),
        "LightGBM defaults, project pipeline": make_model_pipeline(default_config(spec), spec),
        f"champion v{champ.version} ({champ.tags.get('lineage.profile', '?')} search)":
            load_champion(settings.mlflow_tracking_uri, spec.model_name, settings.model_alias, spec, champ).model,
    }
    print(f"bench-model: {spec.name}, {len(X)} labelled rows of {settings.data or 'generated data'}, "
          f"{args.repeats} x stratified {args.folds}-fold CV, {spec.primary_metric}")
    metrics = run.data.metrics
    if f"cv_{spec.primary_metric}" in metrics:
        holdout = metrics.get(f"holdout_{spec.primary_metric}")
        print(f"the champion's search: best CV {metrics[f'cv_{spec.primary_metric}']:.4f} on the training split"
              + (f", holdout {holdout:.4f}" if holdout is not None else ""))
    base: list[float] | None = None
    for name, model in models.items():
        started = time.perf_counter()
        scores = fold_scores(model, X, y, spec, args.folds, args.repeats, settings.seed)
        per_repeat = np.asarray(scores).reshape(args.repeats, args.folds).mean(axis=1)
        mean = float(np.mean(scores))
        gain = ""
        if base is None:
            base = scores
        else:
            diff, low, high = paired_gain(scores, base, args.folds, spec.greater_is_better)
            gain = f"  gain {diff:+.4f} over plain defaults (95% CI {low:+.4f} to {high:+.4f})"
        print(f"{name:42s} mean {mean:.4f} ({args.folds}-fold means {' '.join(f'{m:.4f}' for m in per_repeat)})"
              f"  {time.perf_counter() - started:4.0f} s{gain}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
