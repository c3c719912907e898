#!/bin/sh
# Entry point of the dev image (jupyter, pipeline, tuner, scheduler): make sure the Optuna database and tables exist
# (waiting for Postgres), then run the container's command.
set -e
python /app/docker/init_stores.py
exec "$@"
