"""`make retrain-if-drift [CURRENT=... REFERENCE=... DATA=... PROFILE=...]`: monitor, and run the pipeline only on drift.

The monitor decides whether the drift crossed DRIFT_SHARE_THRESHOLD; the pipeline's gate then decides whether the
new model replaces the champion, so retraining can never make the served model worse on the holdout.
Exit status: the pipeline's when it ran, 0 when there was no drift, 2 when the monitor's input was wrong.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from nbs_lib.config import find_project_dir
from src.signals import wait_passing_sigterm_on

from . import monitor

log = logging.getLogger(__name__)


def run_pipeline() -> int:
    """`python -m src.pipeline` with this environment (DATA, PROFILE, SPEC as for `make pipeline`)."""
    proc = subprocess.Popen([sys.executable, "-m", "src.pipeline"], cwd=find_project_dir(), env=os.environ.copy())
    return wait_passing_sigterm_on(proc)  # Ctrl-C or SIGTERM: the pipeline stops its notebook and marks its run KILLED


def main(argv: list[str] | None = None) -> int:
    monitor.configure_output()
    status, _ = monitor.run(argv)
    if status == monitor.NO_DRIFT:
        print("\nno retraining: the drift is below the threshold, the champion stays.")
        return 0
    if status != monitor.DRIFT:
        return status
    print("\ndrift crossed the threshold: running the pipeline (its gate decides whether the champion moves)\n", flush=True)
    return run_pipeline()


if __name__ == "__main__":
    sys.exit(main())
