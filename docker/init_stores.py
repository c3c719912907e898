"""Before a container's command runs: wait for Postgres, create the Optuna database when missing, create its tables once.

The postgres image creates one database (MLflow's, POSTGRES_DB); OPTUNA_STORAGE names a second one. Several tuners
starting together on an empty database would race to create Optuna's tables, so that happens under an advisory lock.
Does nothing when OPTUNA_STORAGE is not a postgresql(+psycopg2):// URL. Exit 1 with the reason when Postgres stays unreachable.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import closing
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

log = logging.getLogger("init_stores")

LOCK_ID = 7_305_211  # any constant: serialises schema creation across containers


def connect(url: URL, database: str, timeout_s: float):
    """A psycopg2 connection to `database` on the server of `url`, retried until Postgres answers or `timeout_s` passes."""
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                                    dbname=database, connect_timeout=5)
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: Postgres at {url.host}:{url.port or 5432} did not answer within "
                                 f"{timeout_s:.0f} s ({str(e).strip()}). Is the postgres service up and are "
                                 "POSTGRES_USER / POSTGRES_PASSWORD in .env right?") from e
            log.info("waiting for Postgres at %s (%s)", url.host, str(e).strip().splitlines()[0])
            time.sleep(2)


def ensure_database(url: URL, timeout_s: float) -> None:
    """Create the database named in `url` unless it exists (another container creating it at once is fine)."""
    from psycopg2 import errors, sql

    with closing(connect(url, "postgres", timeout_s)) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
        if cur.fetchone():
            return
        try:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
            log.info("created database %s", url.database)
        except (errors.DuplicateDatabase, errors.UniqueViolation):
            pass


def ensure_optuna_schema(url: URL, storage_url: str, timeout_s: float) -> None:
    """Create Optuna's tables (a no-op when present), one container at a time."""
    import optuna

    with closing(connect(url, url.database, timeout_s)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            optuna.storages.RDBStorage(storage_url, engine_kwargs={"pool_pre_ping": True}).remove_session()
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    storage = os.environ.get("OPTUNA_STORAGE", "")
    if not storage.startswith(("postgresql://", "postgresql+psycopg2://")):
        return 0
    from sqlalchemy.engine import make_url

    url = make_url(storage)
    timeout_s = float(os.environ.get("STORES_WAIT_SECONDS", "120"))
    ensure_database(url, timeout_s)
    ensure_optuna_schema(url, storage, timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
