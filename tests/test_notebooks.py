"""The notebooks' own tests: every exported function is demonstrated and checked by the cell after it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_DIR, isolated_env


def test_every_notebook_passes_nbdev_test(tmp_path):
    env = {**os.environ, **isolated_env(tmp_path)}
    env.pop("IN_TEST", None)
    proc = subprocess.run([str(Path(sys.executable).parent / "nbdev-test"), "--n-workers", "0"], cwd=PROJECT_DIR / "notebooks",
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert "Success" in proc.stdout + proc.stderr

