"""Work handed to a thread by a coroutine cancelled meanwhile (servefiles.threadwork): what the
thread took is given back exactly once, by whichever side sees it last, and a caller that must
not clean up beside the thread waits for it, however often it is cancelled. Real threads, real
cancellations; the threads are held with events only to fix the order."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest

from servefiles.threadwork import finished_on_thread, taken_on_thread


def recorded(given: list[tuple[str, int]]) -> Callable[[str], None]:
    """A give-back that records what it was given and on which thread."""
    return lambda taken: given.append((taken, threading.get_ident()))


def test_what_the_thread_took_after_its_caller_left_is_given_back_on_the_thread() -> None:
    given: list[tuple[str, int]] = []
    started, release = threading.Event(), threading.Event()

    def take() -> str:
        started.set()
        release.wait(5)
        return "lock"

    async def leave_early() -> None:
        caller = asyncio.ensure_future(taken_on_thread(take, recorded(given)))
        await asyncio.to_thread(started.wait, 5)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()

    asyncio.run(leave_early())  # waits for the loop's threads as it ends
    assert len(given) == 1 and given[0][0] == "lock"
    assert given[0][1] != threading.get_ident(), "given back on the loop, not by the thread"


def test_what_the_thread_took_before_its_caller_was_cancelled_is_given_back_by_the_caller() -> None:
    """The thread ended (its result on its way to the loop) before the cancellation reached the
    caller: the caller gives it back, at once, on the loop's thread."""
    given: list[tuple[str, int]] = []
    started, release = threading.Event(), threading.Event()
    ended = threading.Event()

    def take() -> str:
        started.set()
        release.wait(5)
        ended.set()
        return "descriptor"

    async def cancel_late() -> None:
        caller = asyncio.ensure_future(taken_on_thread(take, recorded(given)))
        await asyncio.to_thread(started.wait, 5)
        release.set()
        assert ended.wait(5)
        time.sleep(0.1)  # noqa: ASYNC251  # the loop held on purpose: the thread hands its result over first
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(cancel_late())
    assert given == [("descriptor", threading.get_ident())]


def test_nothing_is_given_back_when_the_caller_takes_it() -> None:
    given: list[str] = []
    assert asyncio.run(taken_on_thread(lambda: "fd", given.append)) == "fd"
    assert given == []


def test_a_take_that_fails_gives_nothing_back_and_its_error_is_the_callers() -> None:
    given: list[object] = []

    def take() -> str:
        raise OSError("no space")

    with pytest.raises(OSError, match="no space"):
        asyncio.run(taken_on_thread(take, given.append))
    assert given == []


def test_a_give_back_that_fails_is_logged_and_the_cancellation_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    def take() -> int:
        started.set()
        release.wait(5)
        ended.set()
        return 7

    def give_back(taken: int) -> None:
        raise OSError(f"could not close {taken}")

    async def cancel_late() -> bool:
        caller = asyncio.ensure_future(taken_on_thread(take, give_back))
        await asyncio.to_thread(started.wait, 5)
        release.set()
        assert ended.wait(5)
        time.sleep(0.1)  # noqa: ASYNC251  # as above: the thread ended before the cancellation
        caller.cancel()
        await asyncio.wait([caller])
        return caller.cancelled()

    with caplog.at_level(logging.WARNING, logger="servefiles"):
        assert asyncio.run(cancel_late()), "the give-back's error replaced the cancellation"
    assert "could not close 7" in caplog.text


def test_a_caller_cancelled_twice_still_waits_for_its_thread() -> None:
    """A close cancelled while it cancels its fills (Ctrl-C during a shutdown) cancels each fill a
    second time: the fill must still not clean up beside the step running on its thread."""
    events: list[str] = []
    started, release = threading.Event(), threading.Event()

    def step() -> None:
        started.set()
        release.wait(5)
        time.sleep(0.05)
        events.append("step ends")

    async def fill() -> None:
        try:
            await finished_on_thread(step)
        finally:
            events.append("cleanup")

    async def cancel_twice() -> None:
        task = asyncio.ensure_future(fill())
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait([task])
        assert task.cancelled()

    asyncio.run(cancel_twice())
    assert events == ["step ends", "cleanup"]
