# Sourced by docker/test-compose.sh and docker/bench-tuners.sh: a throw-away compose project with its own env file
# (.env.example with random secrets and the caller's ports and study), recorded HTTP calls, waits on health and on
# tuners, timed steps, and at exit a report and `down -v`. The caller sets, before sourcing: NAME (for the report),
# PROJECT, API_PORT, MLFLOW_PORT, JUPYTER_PORT, STUDY, TRIALS, POLL.

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
command -v "${COMPOSE[0]}" >/dev/null || { echo "error: neither 'docker compose' nor 'docker-compose' found" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers; start one (here: bash ../shared/tools/docker-sandbox.sh)" >&2; exit 2; }
for tool in curl python3; do command -v $tool >/dev/null || { echo "error: $tool is needed on the host" >&2; exit 2; }; done

API="http://127.0.0.1:$API_PORT"
MLFLOW="http://127.0.0.1:$MLFLOW_PORT"
ENV_FILE=$(mktemp)
set_env() { # set_env KEY VALUE: in the project's env file
  python3 - "$ENV_FILE" "$1" "$2" <<'PY'
import sys
path, key, value = sys.argv[1:]
lines = [line for line in open(path).read().splitlines() if not line.startswith(f"{key}=")]
open(path, "w").write("\n".join(lines + [f"{key}={value}"]) + "\n")
PY
}
secret() { python3 -c "import secrets; print(secrets.token_hex(12))"; }
cp .env.example "$ENV_FILE"
set_env POSTGRES_PASSWORD "$(secret)"; set_env JUPYTER_TOKEN "$(secret)"; set_env API_KEY "$(secret)"
MLFLOW_CREDENTIALS="admin:$(secret)"
set_env MLFLOW_USER admin; set_env MLFLOW_PASSWORD "${MLFLOW_CREDENTIALS#admin:}"; set_env MLFLOW_SECRET_KEY "$(secret)"
set_env API_PORT "$API_PORT"; set_env MLFLOW_PORT "$MLFLOW_PORT"; set_env JUPYTER_PORT "$JUPYTER_PORT"
set_env OPTUNA_STUDY "$STUDY"; set_env TUNER_TRIALS "$TRIALS"; set_env MODEL_POLL_SECONDS "$POLL"
# Exported variables win over the env file in compose: un-export them (values stay for this script) so the file decides.
for key in $(grep -oE '^[A-Z_]+' "$ENV_FILE"); do export -n "$key"; done

dc() { "${COMPOSE[@]}" -p "$PROJECT" --env-file "$ENV_FILE" "$@"; }

STEPS=() CALLS=() CURRENT="" REPORT=()
T0=$SECONDS
teardown() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "FAILED at step: ${CURRENT:-setup}" >&2
    echo "--- last logs of the stack ---"
    dc logs --tail 40 2>&1 | tail -150 || true
  fi
  local t=$SECONDS
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  rm -f "$ENV_FILE"
  STEPS+=("$(printf '%-62s %6ds' 'tear down (down -v)' $((SECONDS - t)))")
  echo
  echo "=== $NAME: steps (${COMPOSE[*]}, $(nproc) CPU cores) ==="
  printf '%s\n' "${STEPS[@]}"
  printf '%-62s %6ds\n' "total" $((SECONDS - T0))
  if ((${#CALLS[@]})); then echo "=== calls ==="; printf '  %s\n' "${CALLS[@]}"; fi
  if ((${#REPORT[@]})); then echo "=== results ==="; printf '%s\n' "${REPORT[@]}"; fi
  if [[ $rc -eq 0 ]]; then echo "$NAME: PASSED"; else echo "$NAME: FAILED (exit $rc)"; fi
  exit $rc
}
trap teardown EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { # step "description" command...: run it (errexit stays on inside), record its duration
  CURRENT=$1; shift
  local t=$SECONDS
  echo ">>> $CURRENT"
  "$@"
  STEPS+=("$(printf '%-62s %6ds' "$CURRENT" $((SECONDS - t)))")
}

# http METHOD URL [JSON] [HEADER]: sets STATUS and BODY, records the call.
http() {
  local out; out=$(mktemp)
  local args=(-s -o "$out" -w '%{http_code}' -X "$1" --max-time 60)
  [[ -n ${3:-} ]] && args+=(-H 'Content-Type: application/json' --data "$3")
  [[ -n ${4:-} ]] && args+=(-H "$4")
  # the MLflow server asks for a user; ANONYMOUS=1 calls it without one
  [[ $2 == "$MLFLOW"* && -z ${ANONYMOUS:-} ]] && args+=(-u "$MLFLOW_CREDENTIALS")
  STATUS=$(curl "${args[@]}" "$2" || true)
  BODY=$(cat "$out"); rm -f "$out"
  local flat; flat=$(tr -s ' \n' ' ' <<<"$BODY")
  CALLS+=("$1 ${2#http://127.0.0.1} -> $STATUS ${flat:0:120}")
}
expect_status() { [[ $STATUS == "$1" ]] || fail "$2: expected HTTP $1, got $STATUS: ${BODY:0:500}"; }
expect_body() { [[ $BODY == *"$1"* ]] || fail "$2: body lacks '$1': ${BODY:0:500}"; }
json() { python3 -c "import json, sys; d = json.loads(sys.stdin.read()); print($1)" <<<"$BODY"; }

cid() { dc ps -q "$1" | head -1; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null; }
wait_healthy() { # wait_healthy TIMEOUT SERVICE...: healthy, or running for a service without a healthcheck
  local timeout=$1; shift
  local deadline=$((SECONDS + timeout)) svc c s
  for svc in "$@"; do
    while :; do
      c=$(cid "$svc"); s=missing
      [[ -n $c ]] && s=$(health "$c")
      [[ $s == healthy || $s == running ]] && break
      (( SECONDS < deadline )) || { echo "$svc is '$s' after ${timeout}s" >&2; return 1; }
      sleep 2
    done
    echo "    $svc: $s"
  done
}
wait_tuners_exit() { # wait_tuners_exit TIMEOUT: every tuner container exited 0
  local deadline=$((SECONDS + $1)) ids states
  while :; do
    ids=$(dc ps -q tuner)
    [[ -n $ids ]] || { echo "no tuner container" >&2; return 1; }
    # shellcheck disable=SC2086
    states=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' $ids)
    if ! grep -qv '^exited' <<<"$states"; then
      echo "    tuners (status exit-code restarts): $(tr '\n' ';' <<<"$states")"
      if grep -qv '^exited 0 ' <<<"$states"; then echo "a tuner failed" >&2; return 1; fi
      return 0
    fi
    (( SECONDS < deadline )) || { echo "tuners still running after $1 s" >&2; return 1; }
    sleep 2
  done
}
build() { # build the images (args: services); the output goes to a file whose tail is shown on failure
  local log; log=$(mktemp)
  dc build "$@" >"$log" 2>&1 || { tail -40 "$log"; rm -f "$log"; return 1; }
  grep -E '^(Successfully tagged|naming to)' "$log" | sed 's/^/    /' || true
  rm -f "$log"
}
wait_ready() { # wait_ready TIMEOUT: the api answers /ready 200 (only the last poll is recorded)
  local deadline=$((SECONDS + $1))
  while :; do
    http GET "$API/ready"
    [[ $STATUS == 200 ]] && return 0
    (( SECONDS < deadline )) || { echo "/ready is $STATUS after $1 s: $BODY" >&2; return 1; }
    unset 'CALLS[${#CALLS[@]}-1]'
    sleep 2
  done
}
experiment_id() { # experiment_id NAME -> EXP_ID
  http GET "$MLFLOW/api/2.0/mlflow/experiments/get-by-name?experiment_name=$1"; expect_status 200 "MLflow experiment $1"
  EXP_ID=$(json "d['experiment']['experiment_id']")
}
count_trial_runs() { # how many trial runs of STUDY finished (complete or pruned), from MLflow -> FINISHED_TRIALS
  http POST "$MLFLOW/api/2.0/mlflow/runs/search" \
    "{\"experiment_ids\": [\"$EXP_ID\"], \"filter\": \"tags.\`optuna.study\` = '$STUDY'\", \"max_results\": 1000}"
  expect_status 200 "search the study's runs"
  FINISHED_TRIALS=$(json "sum({t['key']: t['value'] for t in r['data'].get('tags', [])}.get('optuna.state') in ('COMPLETE', 'PRUNED') for r in d.get('runs', []))")
}
