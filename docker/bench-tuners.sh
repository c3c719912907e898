#!/usr/bin/env bash
# `make bench-tuners`: how much faster the shared Optuna study fills with 3 tuner containers than with 1.
#
# One throw-away stack (postgres + mlflow), then for each worker count a fresh study brought to BENCH_TRIALS
# finished trials by `docker-compose up --scale tuner=N tuner`, timed from `up` until every tuner has exited. Same
# spec, profile, data and target for each count, measured in one run; prints a table and tears the stack down.
# BENCH_WORKERS lists the counts (default "1 3"). Each tuner fits on TUNER_N_JOBS threads (1): up to one tuner per core.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${COMPOSE_BENCH_PROJECT:-nbs-mlops-bench}
TRIALS=${BENCH_TRIALS:-30}
API_PORT=${TEST_API_PORT:-18000}
MLFLOW_PORT=${TEST_MLFLOW_PORT:-15000}
JUPYTER_PORT=${TEST_JUPYTER_PORT:-18888}
POLL=30
STUDY=unset

NAME=bench-tuners
# shellcheck source=docker/lib.sh
source docker/lib.sh
dc down -v --remove-orphans >/dev/null 2>&1 || true

step "build images (mlflow, dev)" build mlflow tuner
bring_up() { dc up -d postgres mlflow; wait_healthy 240 postgres mlflow; }
step "up postgres mlflow, wait healthy" bring_up

ROWS=()
BASE=""
for n in ${BENCH_WORKERS:-1 3}; do
  STUDY="bench-$n-workers-$(date +%s)"
  set_env OPTUNA_STUDY "$STUDY"
  run_study() {
    dc up -d --no-deps --scale tuner="$n" tuner
    wait_tuners_exit 900
  }
  t=$SECONDS
  step "$n tuner(s): study to $TRIALS finished trials" run_study
  wall=$((SECONDS - t))
  experiment_id obesity
  count_trial_runs
  dc rm -fs tuner >/dev/null 2>&1 || true
  BASE=${BASE:-$wall}
  ROWS+=("$(printf '| %7d | %8d | %15d | %11.1f | %7.2fx |' "$n" "$wall" "$FINISHED_TRIALS" \
    "$(python3 -c "print($FINISHED_TRIALS * 60 / max($wall, 1))")" "$(python3 -c "print($BASE / max($wall, 1))")")")
done

REPORT+=("host: $(nproc) CPU cores; smoke profile (3-fold CV); wall time from 'up --scale tuner=N' until all tuners exited")
REPORT+=("| tuners  | wall (s) | finished trials | trials/min  | speedup  |")
REPORT+=("|---------|----------|-----------------|-------------|----------|")
REPORT+=("${ROWS[@]}")
