"""System tools some tests need (nginx, systemd-analyze): found, else installed by the project's
script for it, else the test is skipped (failed with CI=true)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from servefiles.cache.fill import Filler

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


FILLS_END_SECONDS = 10.0


async def fills_ended(filler: Filler | None) -> None:
    """Until no fill runs in this process (the loop runs meanwhile). A fill commits on a thread and
    the index shows its entry a moment before that thread closes the temp file's descriptor, which
    by then is open on the cache file: a test of descriptors left open waits for this first."""
    deadline = time.monotonic() + FILLS_END_SECONDS
    while filler is not None and filler.in_flight:
        assert time.monotonic() < deadline, "a fill did not end"
        await asyncio.sleep(0.02)


def fills_ended_on_other_thread(filler: Filler | None) -> None:
    """:func:`fills_ended` from a thread other than the loop's (a WSGI request thread)."""
    deadline = time.monotonic() + FILLS_END_SECONDS
    while filler is not None and filler.in_flight:
        assert time.monotonic() < deadline, "a fill did not end"
        time.sleep(0.02)
