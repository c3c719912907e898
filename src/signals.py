"""SIGTERM stops a batch command the way Ctrl-C does.

`docker stop`, `docker-compose down`, a scheduler's timeout and a plain `kill` send SIGTERM. Python's default is to
die on the spot: a pipeline's MLflow run stays RUNNING and a tuner's trial waits for the heartbeat to notice. In a
container it is worse: the command runs as PID 1, which the kernel shields from a signal's default action, so
`docker stop` waits its 10 s and then SIGKILLs. With this handler SIGTERM raises KeyboardInterrupt in the main
thread, and each command's Ctrl-C path (stop the notebook, mark the run KILLED, queue the trial again) handles it.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopSignal:
    "The signal that stopped a command: SIGINT (Ctrl-C) unless SIGTERM arrived."

    def __init__(self) -> None:
        self.signum = signal.SIGINT

    @property
    def exit_code(self) -> int:
        "128 + the signal's number, as a shell reports a command a signal stopped (130 for Ctrl-C, 143 for SIGTERM)."
        return 128 + int(self.signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def sigterm_as_interrupt() -> Iterator[StopSignal]:
    """Within the block SIGTERM raises KeyboardInterrupt in the main thread; yields which signal it was. Off the
    main thread (where Python cannot set handlers) the block runs unchanged."""
    received = StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_sigterm(signum, frame):
        received.signum = signal.Signals(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_passing_sigterm_on(proc: subprocess.Popen) -> int:
    """Wait for a child command until it has exited, and return its exit status. SIGTERM to this process is passed
    on to the child; Ctrl-C in a terminal has reached the child already (the whole process group gets it). Either
    way the wait goes on, so the child can stop cleanly (the pipeline marks its run KILLED); `subprocess.run` would
    SIGKILL it 0.25 s after Ctrl-C."""
    with sigterm_as_interrupt() as stop:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                if stop.signum == signal.SIGTERM:
                    proc.send_signal(signal.SIGTERM)
                    stop.signum = signal.SIGINT
