"""Run manage.py as a deployment would: a fresh process with only the environment it is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Only what a deployment would set: nothing of the test run's environment.
    base = {"PATH": os.environ["PATH"], "PARLEY_VAR_DIR": os.environ["PARLEY_VAR_DIR"]}
    return subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
