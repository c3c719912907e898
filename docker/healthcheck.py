"""Health check of a batch container (tuner, pipeline, scheduler): exit 0 when a process whose command line contains
MARKER is alive (not a zombie, not stopped) and, with --heartbeat, that file was touched within --max-age seconds.

    python /app/docker/healthcheck.py src.tune
    python /app/docker/healthcheck.py docker/scheduler.py --heartbeat /tmp/scheduler.heartbeat --max-age 180

Reads /proc only (Linux); prints the reason and exits 1 when unhealthy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PROC = Path("/proc")


def processes(marker: str) -> dict[int, str]:
    """{pid: state letter} of the processes (this one excepted) whose command line contains `marker`."""
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if any(marker.encode() in arg for arg in argv) and "healthcheck.py" not in " ".join(map(os.fsdecode, argv)):
            found[int(entry.name)] = stat.rsplit(")", 1)[1].split()[0]  # the field after "(comm)"
    return found


def problem(marker: str, heartbeat: Path | None = None, max_age_s: float = 180.0) -> str | None:
    """Why the container is unhealthy, or None."""
    states = processes(marker)
    if not any(state not in "ZTtXx" for state in states.values()):
        return f"no running process with {marker!r} in its command line (found: {states or 'none'})"
    if heartbeat is not None:
        try:
            age = time.time() - heartbeat.stat().st_mtime
        except FileNotFoundError:
            return f"{heartbeat} does not exist: the process has not reached its main loop"
        if age > max_age_s:
            return f"{heartbeat} is {age:.0f} s old (more than {max_age_s:.0f} s): the process is stuck"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("marker", help="text the process's command line contains, e.g. src.tune")
    parser.add_argument("--heartbeat", type=Path, help="a file the process touches regularly")
    parser.add_argument("--max-age", type=float, default=180.0, help="oldest heartbeat accepted, in seconds")
    args = parser.parse_args(argv)
    reason = problem(args.marker, args.heartbeat, args.max_age)
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
