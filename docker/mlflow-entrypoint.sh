#!/bin/sh
# Entry point of the MLflow image: refuse .env.example's placeholder secrets, write the basic-auth app's
# configuration (its users live in the backend store's database, in tables of their own), then run the server.
# Every request but /health needs a user: MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD create the admin on
# the first start; later starts keep the stored password (rotate it with MLflow's update-password API).
set -e
refuse() {
  echo "error: $1 is still the .env.example placeholder (change-me...): set $1 in .env to a random URL-safe string," \
    "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))'" >&2
  exit 2
}
# the password inside postgresql+psycopg2://user:password@host/db
case "${MLFLOW_BACKEND_STORE_URI:-}" in *://*:change-me*@*) refuse POSTGRES_PASSWORD ;; esac
case "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" in change-me*|"") refuse MLFLOW_PASSWORD ;; esac
case "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" in change-me*|"") refuse MLFLOW_SECRET_KEY ;; esac
MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-/tmp/basic_auth.ini}
export MLFLOW_AUTH_CONFIG_PATH
umask 077   # the file holds the database password
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = $MLFLOW_BACKEND_STORE_URI
INI
exec mlflow server --app-name basic-auth --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --serve-artifacts \
  --artifacts-destination /mlartifacts --host 0.0.0.0 --port 5000 --workers "$MLFLOW_WORKERS"
