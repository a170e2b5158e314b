"""Run the project's install scripts (scripts/install-nginx, scripts/install-chromium) from tests.

Tests run in parallel workers (pytest-xdist), and other checkouts may run theirs at the same
time: two apt-gets at once fail on dpkg's lock. So an install runs under one machine-wide
file lock, and whoever gets the lock second finds the package there and runs nothing.
"""

from __future__ import annotations

import fcntl
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = Path("/tmp/servefiles-install.lock")


def install_once(script: str, installed: Callable[[], bool], timeout: float) -> subprocess.CompletedProcess[str] | None:
    """Run ``scripts/SCRIPT`` unless ``installed()``, holding the lock; its result, or None if not run."""
    if installed():
        return None
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if installed():
            return None
        return subprocess.run([ROOT / "scripts" / script], capture_output=True, text=True, timeout=timeout)
