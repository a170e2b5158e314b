"""System tools some tests need (nginx, systemd-analyze): found, else installed by the project's
script for it, else the test is skipped (failed with CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def installed(command: str, script: str, *, sbin: bool = False) -> str:
    """The path of ``command`` (or ``/usr/sbin/COMMAND`` with ``sbin``, outside root's PATH), after
    running ``scripts/SCRIPT`` when it is missing."""

    def find() -> str | None:
        fallback = f"/usr/sbin/{command}"
        return shutil.which(command) or (fallback if sbin and os.path.exists(fallback) else None)

    found = find()
    if found is None:
        subprocess.run([str(ROOT / "scripts" / script)], check=False, capture_output=True, timeout=900)
        found = find()
    if found is None:
        message = f"{command} is not installed and scripts/{script} could not install it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def open_descriptors_of(path: Path) -> list[int]:
    """This process's descriptors open on ``path`` (read from ``/proc/self/fd``): a count of them all
    would move with whatever else the process opens and closes meanwhile (connections, threads)."""
    target = os.path.realpath(path)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                found.append(int(name))
        except OSError:  # closed since the listing
            continue
    return found
