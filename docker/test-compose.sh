#!/usr/bin/env bash
# `make test-compose`: the whole stack end to end with a real engine, then torn down (volumes included).
#
# Builds the images, brings postgres, mlflow, api, scheduler and jupyter up and waits for their health, checks the
# api answers 503 with a reason while there is no champion and that MLflow refuses callers without the .env user,
# runs two tuners on one study, runs the pipeline service, checks the MLflow server's champion (REST) and that the
# pipeline took the study's best trial, waits for the api to pick the champion up, calls /model and /predict, runs
# the drift check, scales the tuners back to one, then the bad cases: MLflow down (api stays up, answers 503, no
# restart loop), Postgres restarted while a tuner runs (server and worker reconnect), and `docker stop` of a tuner
# mid-trial (exit 143 at once, its trial queued again). Exits non-zero at the first failure; prints the steps'
# timings and the calls made.
#
# Runs as its own compose project (COMPOSE_TEST_PROJECT, default nbs-mlops-test) with random secrets and its own
# ports (TEST_*_PORT), so a stack started with `make up` is left alone. TEST_TUNER_TRIALS sets the study size.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${COMPOSE_TEST_PROJECT:-nbs-mlops-test}
TRIALS=${TEST_TUNER_TRIALS:-6}
API_PORT=${TEST_API_PORT:-18000}
MLFLOW_PORT=${TEST_MLFLOW_PORT:-15000}
JUPYTER_PORT=${TEST_JUPYTER_PORT:-18888}
POLL=5
STUDY="compose-test-$(date +%s)"

NAME=test-compose
# shellcheck source=docker/lib.sh
source docker/lib.sh

echo "project $PROJECT, study $STUDY, $TRIALS trials, ports api $API_PORT mlflow $MLFLOW_PORT jupyter $JUPYTER_PORT"
dc config -q || fail "docker-compose.yaml does not validate"

dc down -v --remove-orphans >/dev/null 2>&1 || true  # leftovers of an interrupted run

step "build images (mlflow, dev, api)" build
bring_up() {
  dc up -d postgres mlflow api scheduler jupyter
  wait_healthy 240 postgres mlflow api jupyter scheduler
  dc ps
}
step "up postgres mlflow api scheduler jupyter, wait healthy" bring_up

no_champion() {
  http GET "$API/health"; expect_status 200 "/health without a champion"
  http GET "$API/ready"; expect_status 503 "/ready without a champion"; expect_body champion "/ready without a champion"
  http POST "$API/predict" '{}'
  [[ $STATUS == 503 || $STATUS == 422 ]] || fail "/predict without a champion: expected 503 (or 422 for the empty body), got $STATUS"
  http GET "$MLFLOW/health"; expect_status 200 "MLflow /health"
  http GET "$MLFLOW/api/2.0/mlflow/registered-models/alias?name=obesity&alias=champion"
  [[ $STATUS == 404 || $STATUS == 400 ]] || fail "a fresh registry should have no champion, got $STATUS"
  http GET "http://127.0.0.1:$JUPYTER_PORT/api"; expect_status 200 "JupyterLab /api"
}
step "api without a champion: /ready 503 with the reason" no_champion

mlflow_needs_a_user() {
  ANONYMOUS=1 http POST "$MLFLOW/api/2.0/mlflow/experiments/create" '{"name": "intruder"}'
  expect_status 401 "an unauthenticated write to MLflow"
  ANONYMOUS=1 http POST "$MLFLOW/api/2.0/mlflow/registered-models/alias" '{"name": "obesity", "alias": "champion", "version": "1"}'
  expect_status 401 "an unauthenticated alias move"
  ANONYMOUS=1 http GET "$MLFLOW/api/2.0/mlflow/experiments/search?max_results=1"
  expect_status 401 "an unauthenticated read"
  http GET "$MLFLOW/api/2.0/mlflow/experiments/search?max_results=1"; expect_status 200 "MLflow with the .env user"
}
step "MLflow refuses a caller without the .env user (basic auth)" mlflow_needs_a_user

scale_tuners() {  # N TIMEOUT_S: scale the tuner service to N workers and wait for them to finish the study
  dc up -d --no-deps --scale tuner="$1" tuner
  [[ $(dc ps -q tuner | wc -l) -eq $1 ]] || fail "expected $1 tuner container(s), found $(dc ps -q tuner | wc -l)"
  wait_tuners_exit "$2"
}
step "tuners x2 on one study (target $TRIALS trials)" scale_tuners 2 600

check_study() {
  experiment_id obesity
  count_trial_runs
  local n=$FINISHED_TRIALS
  http POST "$MLFLOW/api/2.0/mlflow/runs/search" \
    "{\"experiment_ids\": [\"$EXP_ID\"], \"filter\": \"tags.\`optuna.study\` = '$STUDY' and attributes.run_name LIKE 'tuner-%'\"}"
  expect_status 200 "search tuner runs"
  local workers; workers=$(json "len({r['info']['run_name'] for r in d.get('runs', [])})")
  [[ $workers -eq 2 ]] || fail "expected 2 tuner workers on study $STUDY, found $workers"
  (( n >= 2 )) || fail "the study has $n finished trials, expected some from each worker"
  # a worker stops at the target or after the profile's timeout_s (smoke: 240 s), whichever comes first
  local note=""; (( n >= TRIALS )) || note=" (stopped by the smoke profile's 240 s timeout: the machine is busy)"
  echo "    study $STUDY: $n of $TRIALS finished trials, from $workers workers$note"
}
step "MLflow: both workers logged trials of one study" check_study

step "pipeline service (N_TRIALS=0: the study's best trial)" dc run --rm --no-deps -T pipeline

check_champion() {
  http GET "$MLFLOW/api/2.0/mlflow/registered-models/alias?name=obesity&alias=champion"
  expect_status 200 "champion alias on the MLflow server"
  CHAMPION=$(json "d['model_version']['version']")
  http POST "$MLFLOW/api/2.0/mlflow/runs/search" \
    "{\"experiment_ids\": [\"$EXP_ID\"], \"filter\": \"attributes.run_name LIKE 'pipeline-%'\", \"order_by\": [\"attributes.start_time DESC\"], \"max_results\": 1}"
  expect_status 200 "latest pipeline run"
  local run_id; run_id=$(json "d['runs'][0]['info']['run_id']")
  http GET "$MLFLOW/api/2.0/mlflow-artifacts/artifacts/$EXP_ID/$run_id/artifacts/study_summary.json"
  expect_status 200 "the pipeline run's study_summary.json"
  local study best; study=$(json "d['study']"); best=$(json "d['best_trial']")
  [[ $study == "$STUDY" ]] || fail "the pipeline read study '$study', the tuners filled '$STUDY'"
  http POST "$MLFLOW/api/2.0/mlflow/runs/search" \
    "{\"experiment_ids\": [\"$EXP_ID\"], \"filter\": \"tags.\`optuna.study\` = '$STUDY' and tags.\`optuna.trial\` = '$best'\"}"
  expect_status 200 "the best trial's run"
  local parents; parents=$(json "len(d.get('runs', []))")
  (( parents >= 1 )) || fail "best trial $best of the pipeline's summary was not run by a tuner"
  echo "    champion: obesity v$CHAMPION; pipeline took trial $best of study $study (run by a tuner)"
}
step "MLflow champion + pipeline used the study's best trial" check_champion

api_picks_up() {
  wait_ready $((POLL * 6 + 60))
  http GET "$API/model"; expect_status 200 "/model"
  [[ $(json "d.get('version')") == "$CHAMPION" ]] || fail "/model serves $(json "d.get('version')"), the champion is v$CHAMPION"
  http POST "$API/model/reload" "" "X-API-Key: $(grep -oP '^API_KEY=\K.*' "$ENV_FILE")"; expect_status 200 "/model/reload with the key"
  http POST "$API/model/reload"; expect_status 401 "/model/reload without a key"
  # records generated from the spec, inside the api container (it has nbs_lib and the spec)
  dc exec -T api python -c "
from nbs_lib.config import get_settings, load_spec
from nbs_lib.data import generate_synthetic
s = get_settings(); spec = load_spec(s.spec, s.project_dir)
print(generate_synthetic(spec, 300, seed=7)[spec.feature_names].to_json(orient='records'))" > "$ENV_FILE.records"
  RECORD=$(python3 -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))[0]))" "$ENV_FILE.records")
  http POST "$API/predict" "$RECORD"; expect_status 200 "/predict"; expect_body prediction "/predict"
  echo "    /predict $(json "{k: d[k] for k in d if k != 'probabilities'}")"
  http POST "$API/predict/batch" "{\"records\": $(cat "$ENV_FILE.records")}"; expect_status 200 "/predict/batch (300)"
  rm -f "$ENV_FILE.records"
}
step "api polls the champion up; /model, /predict" api_picks_up

drift_check() {
  if ! dc exec -T scheduler test -d src/monitoring; then
    echo "    src/monitoring not in the image yet: drift check skipped"; return 0
  fi
  local rc=0
  dc exec -T scheduler python docker/scheduler.py --run-now drift || rc=$?
  # 0: no drift, 1: drift over the threshold (both are answers); anything else is a failure
  [[ $rc -le 1 ]] || return 1
  echo "    drift check exit $rc"
}
step "scheduler: drift check once (--run-now drift)" drift_check

step "tuners scaled back to 1" scale_tuners 1 300

mlflow_down() {
  dc stop mlflow
  dc restart api
  wait_healthy 120 api
  http GET "$API/health"; expect_status 200 "/health with MLflow down"
  http GET "$API/ready"; expect_status 503 "/ready with MLflow down"; expect_body champion "/ready with MLflow down"
  http POST "$API/predict" "$RECORD"; expect_status 503 "/predict with MLflow down"
  sleep $((POLL * 2))
  local c; c=$(cid api)
  [[ $(docker inspect -f '{{.State.Running}} {{.RestartCount}}' "$c") == "true 0" ]] || fail "api is restarting with MLflow down"
  echo "    api up, 503 with: $(json "d.get('detail')")"
  dc start mlflow
  wait_healthy 120 mlflow
  wait_ready $((POLL * 6 + 60))
}
step "bad case: MLflow down -> api 503, no crash loop; back" mlflow_down

postgres_restart() {
  local before at_restart more
  count_trial_runs; before=$FINISHED_TRIALS
  more=$((before + 8))
  set_env TUNER_TRIALS "$more"
  dc up -d --no-deps tuner
  # restart Postgres once the worker is adding trials
  local deadline=$((SECONDS + 180))
  while count_trial_runs && (( FINISHED_TRIALS == before )); do
    (( SECONDS < deadline )) || fail "the tuner added no trial within 180 s"
    unset 'CALLS[${#CALLS[@]}-1]'
    sleep 1
  done
  at_restart=$FINISHED_TRIALS
  dc restart postgres
  wait_healthy 120 postgres
  wait_tuners_exit 600
  http POST "$MLFLOW/api/2.0/mlflow/experiments/search" '{"max_results": 10}'
  expect_status 200 "MLflow server after the Postgres restart"
  count_trial_runs; local after=$FINISHED_TRIALS
  (( after > at_restart )) || fail "no trial finished after the Postgres restart ($at_restart before, $after after)"
  http GET "$API/ready"; expect_status 200 "api /ready after the Postgres restart"
  echo "    finished trials: $before at start, $at_restart when Postgres restarted, $after at the end (target $more);" \
       "tuner restarts: $(docker inspect -f '{{.RestartCount}}' "$(cid tuner)")"
}
step "bad case: Postgres restarted mid-study -> reconnect" postgres_restart

tuner_stopped() {  # docker stop a tuner inside its trials: SIGTERM is handled (exit 143 at once), not ignored as PID 1
  count_trial_runs
  set_env TUNER_TRIALS $((FINISHED_TRIALS + 50))
  dc up -d --no-deps tuner
  local c; c=$(cid tuner)
  local deadline=$((SECONDS + 180))
  until docker logs "$c" 2>&1 | grep -q "joins study"; do
    (( SECONDS < deadline )) || fail "the tuner did not join the study within 180 s"
    sleep 1
  done
  sleep 8  # inside its trials
  local t=$SECONDS
  dc stop tuner
  local took=$((SECONDS - t)) code said
  code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
  said=$(docker logs "$c" 2>&1 | grep -E "^SIGTERM: " || true)
  [[ $code == 143 ]] || fail "the stopped tuner exited $code, expected 143: $(docker logs --tail 20 "$c" 2>&1)"
  (( took < 10 )) || fail "docker stop took $took s: the tuner sat out the grace period instead of handling SIGTERM"
  [[ -n $said ]] || fail "the stopped tuner said nothing about its trial"
  echo "    docker stop tuner: exit $code after $took s; $said"
}
step "bad case: docker stop tuner mid-trial -> 143, trial requeued" tuner_stopped
