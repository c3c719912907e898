"""The statistics `make bench-model` prints (the gain over the defaults and its corrected interval), and `make
bench-robustness` run small."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
from conftest import PROJECT_DIR

from src.bench.model import paired_gain


def test_the_gain_is_the_mean_fold_by_fold_difference_with_the_corrected_resampled_t_interval():
    # two folds of 5-fold CV: differences 0.01 and 0.03, variance 2e-4, corrected by 1/2 + 1/(5-1);
    # t(0.975, df=1) = 12.706
    gain, low, high = paired_gain([0.91, 0.93], [0.90, 0.90], folds=5)
    half = 12.7062047 * math.sqrt((1 / 2 + 1 / 4) * 2e-4)
    assert gain == pytest.approx(0.02)
    assert (low, high) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-6)


def test_the_interval_is_wider_than_the_naive_standard_error_because_folds_share_training_rows():
    scores, base = [0.910, 0.905, 0.912, 0.908, 0.909, 0.911], [0.905, 0.903, 0.906, 0.905, 0.904, 0.906]
    gain, low, high = paired_gain(scores, base, folds=3)
    naive_half = 2.5705818 * math.sqrt(sum((s - b - gain) ** 2 for s, b in zip(scores, base, strict=True)) / 5 / 6)
    assert high - gain > 1.5 * naive_half


def test_a_lower_is_better_metric_that_falls_counts_as_a_positive_gain():
    gain, low, high = paired_gain([1.0, 1.2, 0.9], [1.5, 1.6, 1.4], folds=3, greater_is_better=False)
    assert gain == pytest.approx(0.4667, abs=1e-4)
    assert 0 < low < gain < high


def test_identical_models_gain_nothing_and_one_fold_has_no_interval():
    assert paired_gain([0.9, 0.8], [0.9, 0.8], folds=5) == (0.0, 0.0, 0.0)
    gain, low, high = paired_gain([0.9], [0.8], folds=5)
    assert gain == pytest.approx(0.1) and math.isnan(low) and math.isnan(high)


def test_the_api_over_http_gets_no_server_error_and_loses_no_request_under_fuzzing_hostile_bodies_and_reloads(trained_project):
    # `make bench-robustness` at small sizes, against `python -m src.serving --workers 2` over the trained store
    proc = subprocess.run([sys.executable, "-m", "src.bench.robustness", "--examples", "20", "--rounds", "1", "--mb", "1",
                           "--invalid", "1000", "--requests", "200", "--reloads", "1"],
                          cwd=PROJECT_DIR, env={**os.environ, **trained_project}, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    for figure in ("schemathesis: answers by status class", "/health during the hostile set: n, p50, p99, max",
                   "reload load: req/s", "reload load: answers by model version"):
        assert f"| {figure} |" in out, out
    for target in ("schemathesis: 0 server errors or dropped connections", "hostile: 0 server errors",
                   "hostile: 0 connection resets / no answer", "reload load: 0 errors across 1 reloads"):
        assert f"| {target} | 0 | yes |" in out, out + proc.stderr[-3000:]
    assert re.search(r"\| reload load: every worker on the last version within 60 s \| \d+\.\d\d s \| yes \|", out), out
    assert proc.returncode == 0, out + proc.stderr[-3000:]
