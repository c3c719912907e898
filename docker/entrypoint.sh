#!/bin/sh
# Entry point of the dev image (jupyter, pipeline, tuner, scheduler): refuse .env.example's placeholder secrets, make
# sure the Optuna database and tables exist (waiting for Postgres), then run the container's command.
set -e
refuse() {
  echo "error: $1 is still the .env.example placeholder (change-me...): set $1 in .env to a random URL-safe string," \
    "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))'" >&2
  exit 2
}
case "${JUPYTER_TOKEN:-}" in change-me*) refuse JUPYTER_TOKEN ;; esac
# the password inside postgresql+psycopg2://user:password@host/db
case "${OPTUNA_STORAGE:-}" in *://*:change-me*@*) refuse POSTGRES_PASSWORD ;; esac
case "${MLFLOW_TRACKING_PASSWORD:-}" in change-me*) refuse MLFLOW_PASSWORD ;; esac
python "$(dirname "$0")/init_stores.py"
exec "$@"
