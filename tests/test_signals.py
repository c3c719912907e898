"""SIGTERM and Ctrl-C stop a command that runs another (retrain-if-drift runs the pipeline) without cutting the
child's clean stop short: the signal reaches the child once and the parent waits for it, then exits as it did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import PROJECT_DIR

# A child that takes a second to stop cleanly on SIGTERM or Ctrl-C, as the pipeline does, recording what it got.
SLOW_TO_STOP = textwrap.dedent("""
    import pathlib, signal, sys, time
    out = pathlib.Path(sys.argv[1])
    def stop(signum, _):
        out.write_text(out.read_text() + " " + signal.Signals(signum).name)
        time.sleep(1.0)
        out.write_text(out.read_text() + " clean")
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out.write_text("started")
    time.sleep(120)
""")
PARENT = textwrap.dedent("""
    import subprocess, sys
    from src.signals import wait_passing_sigterm_on
    sys.exit(wait_passing_sigterm_on(subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])))
""")


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"], ids=["docker stop", "Ctrl-C in a terminal"])
def test_the_child_gets_the_signal_once_and_is_waited_for_until_it_stopped_cleanly(signum, tmp_path):
    child, marker = tmp_path / "child.py", tmp_path / "child.state"
    child.write_text(SLOW_TO_STOP)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(child), str(marker)], cwd=PROJECT_DIR,
                              start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or not marker.read_text():
            assert parent.poll() is None and time.monotonic() < deadline, parent.stderr.read()
            time.sleep(0.05)
        if signum == "SIGTERM":
            parent.send_signal(signal.SIGTERM)  # docker stop: to the container's command only
        else:
            os.killpg(parent.pid, signal.SIGINT)  # a terminal: to the whole foreground process group
        rc = parent.wait(timeout=30)
    finally:
        parent.kill()
    assert rc == 128 + getattr(signal, signum), parent.stderr.read()
    assert marker.read_text() == f"started {signum} clean"  # one signal, and the child was not killed mid-stop
