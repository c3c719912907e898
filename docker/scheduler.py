"""The stack's scheduler: runs the pipeline and the drift check on cron schedules read from the environment.

PIPELINE_SCHEDULE (default weekly, Sunday 03:00) and DRIFT_SCHEDULE (default daily, 02:30) take five cron fields:
minute hour day-of-month month day-of-week (0 or 7 = Sunday), each `*`, a number, a range `a-b`, a list `a,b` or a
step `*/n` / `a-b/n`; times are UTC. PIPELINE_COMMAND and DRIFT_COMMAND override what runs. A job still running when
its next time comes is not started twice. `--run-now JOB` runs one job once and exits with its exit code.
SIGTERM (`docker-compose stop`) is passed on to the running jobs, which stop as on Ctrl-C; the scheduler waits up
to SCHEDULER_STOP_GRACE_S (25 s; keep it under the service's stop_grace_period) before it kills them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger("scheduler")

DEFAULT_JOBS = {
    "pipeline": ("0 3 * * 0", "python -m src.pipeline"),
    # the API's prediction log over DRIFT_WINDOW_HOURS vs the champion's reference; exit 1 means drift.
    # DRIFT_COMMAND="python -m src.monitoring.retrain" also runs the pipeline when the drift crosses the threshold.
    "drift": ("30 2 * * *", "python -m src.monitoring.monitor"),
}
HEARTBEAT = Path(tempfile.gettempdir()) / "scheduler.heartbeat"  # touched every minute; compose's health check reads it
STOP_GRACE_S = 25.0  # how long a stopped scheduler waits for its running job (SCHEDULER_STOP_GRACE_S)
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


class ScheduleError(ValueError):
    """A schedule that is not five valid cron fields; the message names the field and the allowed range."""


def parse_field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    """The values one cron field allows, e.g. `*/15` over 0-59 -> {0, 15, 30, 45}."""
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step = part.partition("/")
        try:
            first, last = (lo, hi) if rng == "*" else (int(rng.split("-")[0]), int(rng.split("-")[-1]))
            stride = int(step) if step else 1
        except ValueError:
            raise ScheduleError(f"cron {name} field {text!r} is not a number, range, list or step") from None
        if not (lo <= first <= last <= hi) or stride < 1:
            raise ScheduleError(f"cron {name} field {text!r} is outside {lo}-{hi}")
        values.update(range(first, last + 1, stride))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression."""

    expr: str
    fields: tuple[frozenset[int], ...] = field(compare=False)
    day_or: bool = False  # both day fields restricted: cron fires when either matches


    @classmethod
    def parse(cls, expr: str) -> Cron:
        parts = expr.split()
        if len(parts) != 5:
            raise ScheduleError(f"schedule {expr!r} needs 5 cron fields (minute hour day-of-month month day-of-week), "
                                f"e.g. '0 3 * * 0' for Sundays at 03:00")
        fields = tuple(parse_field(p, name, lo, hi) for p, (name, lo, hi) in zip(parts, FIELDS, strict=True))
        dow = fields[4] | ({0} if 7 in fields[4] else set())
        return cls(expr, fields[:4] + (frozenset(dow),), day_or=parts[2] != "*" and parts[4] != "*")

    def matches(self, t: datetime) -> bool:
        """True when minute `t` is one of the schedule's; day-of-month and day-of-week combine like cron (either one)."""
        minute, hour, dom, month, dow = self.fields
        in_dom, in_dow = t.day in dom, (t.isoweekday() % 7) in dow
        day_ok = (in_dom or in_dow) if self.day_or else (in_dom and in_dow)
        return t.minute in minute and t.hour in hour and t.month in month and day_ok

    def next_after(self, t: datetime) -> datetime:
        """The first minute strictly after `t` that the schedule matches (searched up to a year ahead)."""
        m = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(366 * 24 * 60):
            if self.matches(m):
                return m
            m += timedelta(minutes=1)
        raise ScheduleError(f"schedule {self.expr!r} never fires (e.g. 31 February)")


@dataclass
class Job:
    """One scheduled command and its running process, if any."""

    name: str
    cron: Cron
    command: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0


def jobs_from_env(env: dict[str, str]) -> list[Job]:
    """The jobs with schedules and commands from `<JOB>_SCHEDULE` / `<JOB>_COMMAND`; an empty schedule disables one."""
    jobs = []
    for name, (default_schedule, default_command) in DEFAULT_JOBS.items():
        schedule = env.get(f"{name.upper()}_SCHEDULE", default_schedule).strip()
        if schedule.lower() in ("", "off", "none"):
            continue
        command = shlex.split(env.get(f"{name.upper()}_COMMAND") or default_command)
        jobs.append(Job(name, Cron.parse(schedule), command))
    return jobs


def poll(job: Job) -> None:
    """Log and forget a finished run of `job`."""
    if job.proc is not None and job.proc.poll() is not None:
        log.info("%s finished: exit %d after %.0f s", job.name, job.proc.returncode, time.monotonic() - job.started)
        job.proc = None


def start(job: Job) -> None:
    """Start `job` unless its previous run is still going."""
    if job.proc is not None:
        log.warning("%s is still running (started %.0f s ago); skipping this run", job.name, time.monotonic() - job.started)
        return
    log.info("%s starting: %s", job.name, shlex.join(job.command))
    job.proc, job.started = subprocess.Popen(job.command), time.monotonic()


def stop_grace_from_env(env: dict[str, str]) -> float:
    """SCHEDULER_STOP_GRACE_S in seconds (unset or empty: the default); a ValueError that says what to set for
    anything but a finite number >= 0, at start, not when a stop comes."""
    text = env.get("SCHEDULER_STOP_GRACE_S", "").strip()
    if not text:
        return STOP_GRACE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"SCHEDULER_STOP_GRACE_S={text!r} is not a number of seconds >= 0; set it in .env to a number "
                         f"under the scheduler's stop_grace_period (30 s), or leave it empty for {STOP_GRACE_S:.0f}")
    return seconds


def stop_jobs(jobs: list[Job], grace_s: float, forward: bool = True) -> None:
    """Pass SIGTERM on to the running jobs (`forward`; Ctrl-C in a terminal has reached them already) and wait up to
    `grace_s` for them; SIGKILL what is left.

    The pipeline and the tuners handle SIGTERM like Ctrl-C (the notebook stops, the run is marked KILLED, a trial is
    queued again), so `docker-compose stop` ends a scheduled run cleanly instead of killing it mid-write."""
    running = [j for j in jobs if j.proc is not None and j.proc.poll() is None]
    for job in running:
        log.info("stopping %s (pid %d)", job.name, job.proc.pid)
        if forward:
            job.proc.terminate()
    deadline = time.monotonic() + grace_s
    for job in running:
        try:
            job.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            log.info("%s stopped: exit %d", job.name, job.proc.returncode)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killing it", job.name, grace_s)
            job.proc.kill()
            job.proc.wait()


def run_forever(jobs: list[Job]) -> None:
    """Wake at each minute boundary, start the jobs whose schedule matches it; touch HEARTBEAT at each wake."""
    for job in jobs:
        log.info("%s: '%s' (next %s UTC) -> %s", job.name, job.cron.expr,
                 job.cron.next_after(datetime.now(UTC)).strftime("%Y-%m-%d %H:%M"), shlex.join(job.command))
    while True:
        HEARTBEAT.touch()   # the container's health check (docker/healthcheck.py) reads its age
        now = datetime.now(UTC)
        time.sleep(60 - now.second - now.microsecond / 1e6 + 0.5)
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        for job in jobs:
            poll(job)
            if job.cron.matches(minute):
                start(job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-now", choices=sorted(DEFAULT_JOBS), help="run this job once now and exit with its code")
    parser.add_argument("--check", action="store_true", help="print the schedules and their next times, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    try:
        jobs = jobs_from_env(dict(os.environ))
    except ScheduleError as e:
        print(f"error: {e}. Fix PIPELINE_SCHEDULE / DRIFT_SCHEDULE in .env.", file=sys.stderr)
        return 2
    try:
        grace_s = stop_grace_from_env(dict(os.environ))
    except ValueError as e:
        print(f"error: {e}.", file=sys.stderr)
        return 2
    if args.check:
        for job in jobs:
            print(f"{job.name}: {job.cron.expr!r} next {job.cron.next_after(datetime.now(UTC)):%Y-%m-%d %H:%M} UTC: "
                  f"{shlex.join(job.command)}")
        return 0
    if args.run_now:
        job = next((j for j in jobs if j.name == args.run_now), None)
        command = job.command if job else shlex.split(os.environ.get(f"{args.run_now.upper()}_COMMAND")
                                                      or DEFAULT_JOBS[args.run_now][1])
        jobs = [Job(args.run_now, Cron.parse("* * * * *"), command)]
    # As PID 1 in its container the scheduler would ignore SIGTERM (no default action there) until Docker's SIGKILL.
    terminated: list[int] = []

    def on_sigterm(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if args.run_now:
            start(jobs[0])
            return jobs[0].proc.wait()
        run_forever(jobs)
    except KeyboardInterrupt:
        log.info("stopping: waiting up to %.0f s for running jobs", grace_s)
        stop_jobs(jobs, grace_s, forward=bool(terminated))
        if args.run_now and jobs[0].proc is not None:
            return jobs[0].proc.returncode  # the job's own status, as without the signal
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
