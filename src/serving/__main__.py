"""`python -m src.serving [--host H] [--port P] [--workers N]`: check the settings, then run the API under uvicorn.

A bad setting (a placeholder API_KEY) stops here with one line, before uvicorn starts any worker (a worker that fails
to import the app would only be restarted, again and again).

With several workers, each is a process of its own: the Prometheus counters must add up across them, and a
`POST /model/reload` answered by one must reach the others. Both go through PROMETHEUS_MULTIPROC_DIR, prometheus-client's
multiprocess mode: the workers write their metrics there, and a reload leaves a signal file there that every worker
watches (src/serving/state.py). The folder is emptied here, before the workers start, since counts left by an earlier
run would be added to the new ones. Several API containers share no folder: give them MODEL_POLL_SECONDS instead."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_shared_dir(workers: int, env: os._Environ | dict = os.environ) -> Path | None:
    """The workers' shared folder, emptied of an earlier run's metric files and reload signal; None for one worker
    with no folder asked for (a single process needs none). Sets PROMETHEUS_MULTIPROC_DIR in `env` for the workers."""
    given = env.get(MULTIPROC_ENV, "")
    if workers <= 1 and not given:
        return None
    folder = Path(given or tempfile.mkdtemp(prefix="api-workers-"))
    folder.mkdir(parents=True, exist_ok=True)
    from .state import RELOAD_SIGNAL

    for stale in [*folder.glob("*.db"), folder / RELOAD_SIGNAL]:   # only what the workers write: the folder may be shared
        stale.unlink(missing_ok=True)
    env[MULTIPROC_ENV] = str(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")),
                        help="uvicorn worker processes (default: WEB_CONCURRENCY, else 1)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        print(f"error: --workers (WEB_CONCURRENCY) is {args.workers}; give 1 or more worker processes.", file=sys.stderr)
        return 2
    from .settings import main as check_settings

    if check_settings():
        return 2
    shared = prepare_shared_dir(args.workers)
    if shared is not None:
        print(f"{args.workers} workers share {shared} (metrics and reload signal)", file=sys.stderr)
    import uvicorn

    uvicorn.run("src.serving.app:app", host=args.host, port=args.port, workers=args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
